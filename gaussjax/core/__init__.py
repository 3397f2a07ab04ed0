"""The ground floor: the Gaussian model pytree, image, SVG and video-frame I/O, metrics, progress reporting."""
