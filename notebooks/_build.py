"""Builds the notebooks of this folder from the cells written below.

The .ipynb files are generated from this file and committed executed, with
their outputs (figures included); CI (``tests/test_notebooks.py``) checks that
their cells are these and executes them again at a small size. Edit this
file, then run

  python notebooks/_build.py --execute full    # or: --execute small (what CI runs)

Every notebook starts with an install cell (from the project's own source, set in
one place: ``GAUSSJAX_SOURCE``; it does nothing where gaussjax is installed) and a
setup cell that reads the size knob ``GAUSSJAX_NOTEBOOK_SIZE``: ``"small"``
(CI: crops of about 64-96 px, ~100 Gaussians, tens of steps) or ``"full"``
(the default: a 512x512 image, thousands of Gaussians).
"""

from __future__ import annotations

import json
import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text: str):
  return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
  return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


def install() -> object:
  """The install cell: gaussjax from the project's own source, set in one place.

  gaussjax is not on PyPI (and a name there could be anyone's), so the cell
  never runs ``pip install gaussjax``: it installs ``GAUSSJAX_SOURCE`` (a git
  URL or a wheel path) when gaussjax is not importable, and says what to set
  when that is empty. Inside Colab it first installs the JAX build of the
  runtime's accelerator.
  """
  return code('''
      # gaussjax is not on PyPI: it installs from the project's own source, set here.
      GAUSSJAX_SOURCE = ""  # <- a git URL ("git+https://<host>/<you>/gaussjax.git") or a wheel path

      import importlib.util
      import os
      import shutil
      import subprocess
      import sys

      GAUSSJAX_SOURCE = os.environ.get("GAUSSJAX_SOURCE", GAUSSJAX_SOURCE)  # or from the environment
      if importlib.util.find_spec("gaussjax") is None:
        if not GAUSSJAX_SOURCE:
          raise RuntimeError(
              "gaussjax is not installed and GAUSSJAX_SOURCE is empty: set it at the top of this "
              "cell to the project's git URL (git+https://...) or to a wheel you built "
              "(pip wheel . in a checkout); in a checkout, pip install -e '.[notebooks]' instead")
        if "google.colab" in sys.modules:  # the JAX build for Colab's accelerator
          if shutil.which("nvidia-smi"):
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[cuda12]"], check=True)
          elif os.path.exists("/dev/accel0"):
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[tpu]"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", GAUSSJAX_SOURCE,
                        "matplotlib"], check=True)
      ''')


SETUP = '''
    import os
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import gaussjax

    # The size knob: "small" runs in seconds on a CPU (CI), "full" is the real thing.
    SIZE = os.environ.get("GAUSSJAX_NOTEBOOK_SIZE", "full")
    if SIZE not in ("small", "full"):
      raise ValueError(f"GAUSSJAX_NOTEBOOK_SIZE={SIZE!r} must be 'small' or 'full'")
    SMALL = SIZE == "small"
    print(f"gaussjax {gaussjax.__version__}, jax {jax.__version__}, devices {jax.devices()}, size {SIZE}")
'''

# --------------------------------------------------------------------------- 01

QUICKSTART = [
    md('''
        # gaussjax quickstart: an image as 2D Gaussians

        gaussjax represents an image as N coloured 2D Gaussians and renders it as
        their sum, `I(p) = Σ c_i exp(-½ (p-μ_i)ᵀ Σ_i⁻¹ (p-μ_i))`. This notebook loads
        an image, places Gaussians on SLIC superpixels, fits them with optax, watches
        the PSNR climb, draws the Gaussians as ellipses, and renders the result at
        twice the size.

        Set `GAUSSJAX_NOTEBOOK_SIZE=small` for a quick run (CI does).
        '''),
    install(),
    code(SETUP),
    md('''
        ## Load an image

        `IMAGE_PATH = None` uses the astronaut photo that ships with scikit-image
        (no download). Set it to a file of yours; `gaussjax.load_image` reads any
        common format as float32 `[H, W, C]` in [0, 1].
        '''),
    code('''
        import skimage.data

        IMAGE_PATH = None  # e.g. "my_photo.png"

        if IMAGE_PATH is not None:
          image = gaussjax.load_image(IMAGE_PATH)
        else:
          image = skimage.data.astronaut().astype(np.float32) / 255.0  # [512, 512, 3]
        if SMALL:
          image = image[30:126, 170:266]  # a 96x96 crop of the face
        NUM_GAUSSIANS = 100 if SMALL else 4000
        STEPS = 40 if SMALL else 1500
        height, width, channels = image.shape
        print(f"image {height}x{width}x{channels}, {NUM_GAUSSIANS} Gaussians, {STEPS} steps")
        plt.imshow(image)
        plt.axis("off");
        '''),
    md('''
        ## Initialise on SLIC superpixels

        `init_slic` segments the image into exactly N superpixels and turns each one
        into a Gaussian (centroid, pixel covariance, least-squares colour). It is a
        much better start than random placement. We start from half of the
        Gaussians: `fit` adds the rest where the error is largest.
        '''),
    code('''
        t0 = time.perf_counter()
        init = gaussjax.init_slic(image, NUM_GAUSSIANS // 2, key=jax.random.key(0))
        print(f"init_slic: {time.perf_counter() - t0:.2f} s")
        print(jax.tree_util.tree_map(jnp.shape, init))

        init_render = jnp.clip(gaussjax.render(init, height, width), 0.0, 1.0)
        print(f"PSNR of the initialisation: {float(gaussjax.psnr(init_render, image)):.2f} dB")
        '''),
    md('''
        ## Fit

        `fit` runs jitted `fit_step`s (Adam with a learning rate per attribute and
        a warmup-cosine schedule) and logs the loss and PSNR every `log_every`
        steps; `callback` sees every logged entry. Density control is on by
        default: the count grows to `num_gaussians` over the first 30% of the
        steps, and every 30 steps the 5% of Gaussians that contribute least move
        to where the error is largest. `gaussjax.fit_image(image, N, config)` does
        the initialisation and this fit in one call.
        '''),
    code('''
        config = gaussjax.FitConfig(steps=STEPS, log_every=max(STEPS // 20, 1),
                                    num_gaussians=NUM_GAUSSIANS)

        def report(step, metrics):
          if step % (config.log_every * 5) == 0:
            print(f"step {step:5d}  PSNR {metrics['psnr']:6.2f} dB  {metrics['wall_time']:6.1f} s")

        fitted, history = gaussjax.fit(image, init, config, callback=report)
        print(f"final PSNR {history.psnr[-1]:.2f} dB after {history.step[-1]} steps, "
              f"{history.wall_time[-1]:.1f} s (compilation included)")
        '''),
    code('''
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(history.step, history.psnr, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{NUM_GAUSSIANS} Gaussians on a {height}x{width} image")
        ax.grid(alpha=0.3)
        '''),
    code('''
        result = jnp.clip(gaussjax.render(fitted, height, width), 0.0, 1.0)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        for ax, img, title in zip(axes, (image, init_render, result), (
            "original", f"SLIC init, {float(gaussjax.psnr(init_render, image)):.2f} dB",
            f"fitted, {float(gaussjax.psnr(result, image)):.2f} dB")):
          ax.imshow(np.asarray(img))
          ax.set_title(title)
          ax.axis("off")
        '''),
    md('''
        ## The Gaussians as ellipses

        Each Gaussian's covariance `Σ = L Lᵀ` (`gaussjax.covariances`) gives an
        ellipse: its axes are the eigenvectors, its radii the square roots of the
        eigenvalues. Below, the 1σ ellipses in their own colours over a faded image.
        '''),
    code('''
        from matplotlib.collections import EllipseCollection

        def draw_ellipses(ax, gaussians, image, *, sigma=1.0, max_count=1500):
          """Draws (up to max_count of) the Gaussians as their sigma-ellipses over the image."""
          cov = np.asarray(gaussjax.covariances(gaussians.chol))  # [N, 2, 2] (x, y)
          eigval, eigvec = np.linalg.eigh(cov)  # ascending eigenvalues
          radii = sigma * np.sqrt(np.maximum(eigval, 0.0))  # [N, 2]
          angles = np.degrees(np.arctan2(eigvec[:, 1, 1], eigvec[:, 0, 1]))  # major axis direction
          colors = np.clip(np.asarray(gaussians.colors)[:, :3], 0.0, 1.0)
          keep = np.argsort(-radii[:, 1])[:max_count]  # the largest ones when there are many
          ax.imshow(0.35 + 0.3 * np.asarray(image)[..., :3])
          ax.add_collection(EllipseCollection(
              2 * radii[keep, 1], 2 * radii[keep, 0], angles[keep], units="xy",
              offsets=np.asarray(gaussians.means)[keep], offset_transform=ax.transData,
              facecolors="none", edgecolors=colors[keep], linewidths=0.8))
          ax.set_xlim(0, image.shape[1])
          ax.set_ylim(image.shape[0], 0)
          ax.axis("off")

        fig, axes = plt.subplots(1, 2, figsize=(10, 5))
        draw_ellipses(axes[0], init, image)
        axes[0].set_title("SLIC initialisation")
        draw_ellipses(axes[1], fitted, image)
        axes[1].set_title("after fitting");
        '''),
    md('''
        ## Render at 2×

        The Gaussians describe a continuous picture: `render(..., source_size=(H, W))`
        samples it on any grid. Compare with bicubic upsampling of the pixels.
        '''),
    code('''
        from PIL import Image

        zoom = gaussjax.render(fitted, 2 * height, 2 * width, source_size=(height, width))
        zoom = np.asarray(jnp.clip(zoom, 0.0, 1.0))
        pixels = Image.fromarray(np.round(np.asarray(result) * 255).astype(np.uint8))
        bicubic = np.asarray(pixels.resize((2 * width, 2 * height), Image.BICUBIC)) / 255.0

        crop = np.s_[: min(2 * height, 192), : min(2 * width, 192)]
        fig, axes = plt.subplots(1, 2, figsize=(10, 5))
        axes[0].imshow(bicubic[crop], interpolation="nearest")
        axes[0].set_title("fitted render at 1×, bicubic 2×")
        axes[1].imshow(zoom[crop], interpolation="nearest")
        axes[1].set_title("Gaussians rendered at 2×")
        for ax in axes:
          ax.axis("off")
        print(zoom.shape)
        '''),
    md('''
        Next: `02_codec.ipynb` compresses the Gaussians into a file,
        `03_batch.ipynb` fits many images at once, and `04_under_the_hood.ipynb`
        opens the pytree, the renderers and the training step.
        '''),
]

# --------------------------------------------------------------------------- 02

CODEC = [
    md('''
        # The gaussjax codec against JPEG, WebP, JPEG 2000 and AVIF

        `gaussjax.encode` fits Gaussians, fine-tunes them under quantisation and
        entropy-codes them into a small file; `gaussjax.decode` renders the file
        back. Here we encode one image at several rates, plot rate against PSNR
        next to the classical codecs (through Pillow), and compare crops at equal
        file size.
        '''),
    install(),
    code(SETUP),
    code('''
        import io

        import skimage.data
        from PIL import Image, features

        IMAGE_PATH = None  # or a file of yours
        if IMAGE_PATH is not None:
          image = gaussjax.load_image(IMAGE_PATH)
          image = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]  # RGB
        else:
          image = skimage.data.astronaut().astype(np.float32) / 255.0
        if SMALL:
          image = image[30:126, 170:266]  # 96x96
        height, width, _ = image.shape
        pixels = np.round(image * 255).astype(np.uint8)
        reference = pixels.astype(np.float32) / 255.0  # what the classical codecs see
        print(f"{height}x{width}")
        '''),
    md('''
        ## gaussjax at several rates

        With `CodecConfig(bpp=...)` the encoder hits a target rate (within
        `rate_tolerance`) by choosing the number of Gaussians and the quantiser
        steps. In the small run we use `quality=` (no rate search), which is
        faster, and read the rate off the file size.
        '''),
    code('''
        if SMALL:
          configs = [gaussjax.CodecConfig(quality=q, fit_steps=100, qat_steps=20) for q in (25, 60, 95)]
        else:
          configs = [gaussjax.CodecConfig(bpp=b) for b in (0.25, 0.5, 1.0, 2.0)]

        ours = []  # (bpp, psnr, file bytes, decoded image)
        for config in configs:
          t0 = time.perf_counter()
          data = gaussjax.encode(image, config)
          decoded = gaussjax.decode(data)
          rate = gaussjax.bpp(len(data), height, width)
          quality = float(gaussjax.psnr(decoded, reference))
          ours.append((rate, quality, data, np.asarray(decoded)))
          print(f"{len(data):7d} bytes  {rate:5.2f} bpp  {quality:5.2f} dB  "
                f"({time.perf_counter() - t0:.1f} s)")
        '''),
    md('''
        ## The classical codecs

        All through Pillow, sweeping their quality parameter. JPEG 2000 uses the
        irreversible 9/7 wavelet and the RGB→YCbCr transform (`mct=1`; Pillow's
        default is no colour transform, which costs JPEG 2000 a lot). AVIF is used
        only if this Pillow build supports it.
        '''),
    code('''
        def pillow_codec(fmt, **fixed):
          def run(pixels, param):
            buffer = io.BytesIO()
            options = dict(fixed)
            if fmt == "JPEG2000":
              options.update(quality_mode="rates", quality_layers=[param])
            else:
              options.update(quality=int(param))
            Image.fromarray(pixels).save(buffer, fmt, **options)
            data = buffer.getvalue()
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0
            return data, decoded
          return run

        codecs = {
            "JPEG": (pillow_codec("JPEG", subsampling="4:2:0"), [5, 10, 20, 35, 50, 70, 85, 95]),
            "WebP": (pillow_codec("WEBP", method=6), [5, 10, 20, 35, 50, 70, 85, 95]),
            # quality_layers are compression ratios (24 bpp / ratio)
            "JPEG 2000": (pillow_codec("JPEG2000", irreversible=True, mct=1),
                          [200, 120, 80, 48, 32, 20, 12, 8]),
        }
        if features.check("avif"):
          codecs["AVIF"] = (pillow_codec("AVIF", speed=6), [5, 15, 30, 45, 60, 75, 90])
        else:
          print("this Pillow has no AVIF support: skipping AVIF")

        curves = {}
        for name, (run, params) in codecs.items():
          points = []
          for param in params:
            data, decoded = run(pixels, param)
            points.append((gaussjax.bpp(len(data), height, width),
                           float(gaussjax.psnr(decoded, reference))))
          curves[name] = sorted(points)
          print(name, " ".join(f"{b:.2f}/{p:.1f}" for b, p in curves[name]))
        '''),
    code('''
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for name, points in curves.items():
          ax.plot(*zip(*points), marker=".", label=name)
        ax.plot([o[0] for o in ours], [o[1] for o in ours], marker="o", color="black", lw=2,
                label="gaussjax")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.set_xlim(0, max(3.0, 1.1 * max(o[0] for o in ours)))
        ax.set_title(f"rate-distortion, one {height}x{width} image")
        ax.grid(alpha=0.3)
        ax.legend();
        '''),
    md('''
        ## Crops at equal file size

        For the middle gaussjax rate, each classical codec gets the largest file
        that is not bigger than gaussjax's (its quality parameter searched over
        its whole range).
        '''),
    code('''
        rate, quality, data, decoded = ours[len(ours) // 2]
        budget = len(data)

        def at_most(run, params, budget):
          """The largest file of this codec that fits the byte budget (None if none does)."""
          best = None
          for param in params:
            candidate, out = run(pixels, param)
            if len(candidate) <= budget and (best is None or len(candidate) > len(best[0])):
              best = (candidate, out)
          return best

        panels = [("original", reference, None), ("gaussjax", decoded, len(data))]
        for name, (run, _) in codecs.items():
          if name == "JPEG 2000":
            search = sorted({round(24 * height * width / (8 * budget) * f, 2)
                             for f in (0.9, 1.0, 1.1, 1.25, 1.5, 2.0)})
          else:
            search = range(1, 101, 3)
          found = at_most(run, search, budget)
          if found is None:
            print(f"{name}: no file of {budget} bytes or less")
            continue
          panels.append((name, found[1], len(found[0])))

        crop = np.s_[: min(height, 128), : min(width, 128)]
        fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
        for ax, (name, img, size) in zip(axes, panels):
          ax.imshow(np.asarray(img)[crop], interpolation="nearest")
          title = name if size is None else (
              f"{name}\\n{size} B, {float(gaussjax.psnr(img, reference)):.2f} dB")
          ax.set_title(title, fontsize=9)
          ax.axis("off")
        '''),
    md('''
        The file format is specified in `FORMAT.md`; `gaussjax.decode_gaussians`
        returns the Gaussians of a file, so a decoder can also render them at any
        size (`gaussjax.decode(data, height=..., width=...)`).
        '''),
    code('''
        gaussians, (h0, w0) = gaussjax.decode_gaussians(data)
        print(f"{gaussians.num_gaussians} Gaussians for a {h0}x{w0} image, "
              f"{8 * len(data) / max(gaussians.num_gaussians, 1):.1f} bits per Gaussian")
        big = gaussjax.decode(data, height=2 * h0)
        print("decoded at 2x:", big.shape)
        '''),
]

# --------------------------------------------------------------------------- 03

BATCH = [
    md('''
        # Many images at once: `vmap` and sharding

        `gaussjax.fit_batch` and `gaussjax.encode_batch` fit a whole batch of images
        under one `jit`: `vmap` over images (of different sizes too: they are padded
        into size buckets with a loss mask) and the batch axis split over every
        device of a `jax.sharding.Mesh`. In Colab pick a GPU or TPU runtime to see
        several devices or a faster one; on a CPU it runs on the one CPU device.
        `gaussjax encode-dir` encodes a folder, resumably, with a manifest.
        '''),
    install(),
    code(SETUP),
    code('''
        from jax.sharding import Mesh

        devices = jax.devices()
        print(f"{len(devices)} device(s): {devices}")
        # One mesh axis, "batch": images are independent, so each device gets its share.
        mesh = Mesh(np.asarray(devices, dtype=object), ("batch",))
        print(mesh)
        '''),
    md('''
        ## A folder of images

        Crops of scikit-image's sample photos, in two sizes (to show the size
        buckets), written as PNG files to a temporary folder.
        '''),
    code('''
        import pathlib
        import tempfile

        import skimage.data
        from PIL import Image

        def thumbnail(array, height, width):
          """The centre of an RGB uint8 image cut to the aspect ratio, resized, as float32."""
          h, w = array.shape[:2]
          ch, cw = min(h, w * height // width), min(w, h * width // height)
          top, left = (h - ch) // 2, (w - cw) // 2
          small = Image.fromarray(array[top:top + ch, left:left + cw]).resize((width, height), Image.LANCZOS)
          return np.asarray(small, np.float32) / 255.0

        sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
                   skimage.data.rocket()]
        side = 64 if SMALL else 256
        images = []
        for i, source in enumerate(sources * (1 if SMALL else 2)):
          h = side if i % 2 == 0 else side * 3 // 4  # two sizes
          images.append(thumbnail(source[:, ::-1] if i >= len(sources) else source, h, side))

        folder = pathlib.Path(tempfile.mkdtemp(prefix="gaussjax_batch_"))
        in_dir = folder / "images"
        in_dir.mkdir()
        for i, img in enumerate(images):
          gaussjax.save_image(in_dir / f"img{i:02d}.png", img)
        print(sorted(p.name for p in in_dir.iterdir()), [img.shape for img in images])
        '''),
    md('''
        ## `fit_batch`: `fit` for a batch

        Each image gets exactly the steps `gaussjax.fit` would give it alone; the
        result has a leading batch axis.
        '''),
    code('''
        NUM_GAUSSIANS = 60 if SMALL else 1500
        config = gaussjax.FitConfig(steps=30 if SMALL else 500)
        initial = [gaussjax.init_slic(img, NUM_GAUSSIANS) for img in images]

        t0 = time.perf_counter()
        fitted, metrics = gaussjax.fit_batch(images, initial, config, devices=mesh)
        seconds = time.perf_counter() - t0
        print(f"fit_batch: {len(images)} images in {seconds:.1f} s (compilation included)")
        print("fitted.means:", fitted.means.shape)
        print("PSNR per image:", np.round(metrics["psnr"], 2))
        '''),
    code('''
        fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.6))
        for i, img in enumerate(images):
          g = jax.tree_util.tree_map(lambda x: x[i], fitted)
          h, w, _ = img.shape
          axes[0, i].imshow(img)
          axes[1, i].imshow(np.asarray(jnp.clip(gaussjax.render(g, h, w), 0.0, 1.0)))
          axes[1, i].set_title(f"{metrics['psnr'][i]:.1f} dB", fontsize=9)
        for ax in axes.ravel():
          ax.axis("off")
        '''),
    md('''
        ## `encode_batch`: the codec, batched

        The float fit and the quantisation-aware fine-tuning run batched; entropy
        coding runs per image on the host. Each file decodes with `gaussjax.decode`.
        '''),
    code('''
        # num_gaussians: one N for every size, so the float fits of all images share a batch
        # (the quality setting alone would pick N from each image's pixel count).
        codec_config = gaussjax.CodecConfig(
            quality=60, num_gaussians=NUM_GAUSSIANS,
            **(dict(fit_steps=100, qat_steps=20) if SMALL else {}))
        t0 = time.perf_counter()
        files = gaussjax.encode_batch(images, codec_config, devices=mesh)
        print(f"encode_batch: {len(files)} files in {time.perf_counter() - t0:.1f} s")
        for i, (img, data) in enumerate(zip(images, files)):
          h, w, _ = img.shape
          decoded = gaussjax.decode(data)
          print(f"img{i:02d} {h}x{w}: {len(data):6d} bytes, {gaussjax.bpp(len(data), h, w):.2f} bpp, "
                f"{float(gaussjax.psnr(decoded, img)):.2f} dB")
        '''),
    md('''
        ## `gaussjax encode-dir`: a folder, resumable

        The command line encodes every image of a folder in batches (through
        `encode_batch`), writes `<name>.gjx` files atomically and a
        `manifest.csv`; run it again and it skips what is done.
        '''),
    code('''
        import csv
        import shutil
        import subprocess
        import sys

        # The console script of this Python's gaussjax (next to the interpreter in a venv).
        cli = pathlib.Path(sys.executable).parent / "gaussjax"
        cli = str(cli) if cli.exists() else shutil.which("gaussjax")
        cli_in = in_dir
        if SMALL:  # a fresh process compiles again: keep the small run to one image size
          cli_in = folder / "same_size"
          cli_in.mkdir()
          for i, img in enumerate(images):
            if img.shape == images[0].shape:
              shutil.copy(in_dir / f"img{i:02d}.png", cli_in)
        out_dir = folder / "encoded"
        command = [cli, "encode-dir", str(cli_in), "-o", str(out_dir), "--quality", "60",
                   "--batch", "4", "--no-progress"]
        if SMALL:
          command += ["--fit-steps", "100", "--qat-steps", "20"]
        for attempt in ("first run", "second run (resumes: nothing left to do)"):
          t0 = time.perf_counter()
          done = subprocess.run(command, capture_output=True, text=True)
          print(f"{attempt}: exit {done.returncode}, {time.perf_counter() - t0:.1f} s")
          if done.returncode:
            raise RuntimeError(done.stderr)

        with open(out_dir / "manifest.csv") as f:
          rows = list(csv.DictReader(f))
        for row in rows:
          print(f"{row['name']:10s} {row['width']}x{row['height']}  {row['bytes']:>6s} B  "
                f"{float(row['bpp']):.2f} bpp  {float(row['psnr']):.2f} dB  {row['status']}")
        '''),
    code('''
        shutil.rmtree(folder)  # the temporary folder
        '''),
]

# --------------------------------------------------------------------------- 04

UNDER_THE_HOOD = [
    md('''
        # Under the hood: the pytree, the renderers, a custom loop, gradients

        gaussjax is pure-functional: every public function takes arrays and
        pytrees and returns new ones, so `jit`, `vmap` and `grad` work through it.
        '''),
    install(),
    code(SETUP),
    code('''
        import optax
        import skimage.data

        from PIL import Image

        # The cat (300x451), downscaled: the dense reference renderer below builds an
        # [H, W, N] array, so this notebook stays at sizes where that is cheap.
        image = skimage.data.chelsea()
        image = np.asarray(Image.fromarray(image).resize((96, 64) if SMALL else (225, 150), Image.LANCZOS))
        image = image.astype(np.float32) / 255.0
        height, width, channels = image.shape
        NUM_GAUSSIANS = 80 if SMALL else 600
        print(height, width, channels)
        '''),
    md('''
        ## The pytree

        `Gaussians` is a `NamedTuple` of three arrays in the unconstrained form the
        optimiser updates: `means [N, 2]` (x, y in pixels), `chol [N, 3]` (the
        Cholesky factor `(l11, l21, l22)` of the covariance) and `colors [N, C]`.
        `covariances`, `conics` and `extents` derive the rest.
        '''),
    code('''
        g = gaussjax.init_slic(image, NUM_GAUSSIANS)
        print(type(g).__name__, g._fields, "N =", g.num_gaussians, "C =", g.channels)
        print(jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype)), g))
        print("covariance of Gaussian 0:\\n", gaussjax.covariances(g.chol)[0])
        print("conic (a, b, c) of Gaussian 0:", gaussjax.conics(g.chol)[0])
        print("support half-widths (rx, ry) of Gaussian 0:", gaussjax.extents(g.chol)[0])

        # Pytree utilities work as on any pytree: a batch is a leading axis from stacking,
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), g, gaussjax.scale_gaussians(g, 1.0, 1.0))
        print("stacked means:", stacked.means.shape)
        # and vmap renders it.
        batch = jax.vmap(lambda gi: gaussjax.render(gi, height, width, backend="xla"))(stacked)
        print("vmap(render):", batch.shape)
        '''),
    md('''
        ## The render backends

        `reference` is dense jnp (every Gaussian at every pixel: the test oracle),
        `xla` the portable tiled path, `pallas` the GPU kernels (interpret mode on a
        CPU: correct but slow), and `auto` picks the best for the device. All
        compute the same function, written once in `gaussjax.constants`.
        '''),
    code('''
        print("BACKENDS:", gaussjax.BACKENDS, "| auto ->", gaussjax.default_backend())
        expected = gaussjax.render(g, height, width, backend="reference")
        for backend in ("reference", "xla", "pallas"):
          if backend == "pallas" and gaussjax.default_backend() != "pallas":
            small = g.select(slice(0, 20))  # interpret mode is slow: a few Gaussians
            actual = gaussjax.render(small, 32, 32, backend="pallas")
            error = float(jnp.max(jnp.abs(actual - gaussjax.render(small, 32, 32, backend="reference"))))
            print(f"pallas    (interpret mode, 20 Gaussians, 32x32): max |difference| {error:.2e}")
            continue
          actual = gaussjax.render(g, height, width, backend=backend)
          actual.block_until_ready()
          t0 = time.perf_counter()
          gaussjax.render(g, height, width, backend=backend).block_until_ready()
          ms = 1e3 * (time.perf_counter() - t0)
          print(f"{backend:9s} {ms:8.2f} ms   max |difference| {float(jnp.max(jnp.abs(actual - expected))):.2e}")
        '''),
    md('''
        `render` hides the *plan*: the tiled backends bin Gaussians into static-shaped
        buffers chosen from the concrete Gaussians by `make_plan`. `rasterize` renders
        with an explicit plan and returns an `overflow` flag instead of dropping
        anything silently: when the Gaussians outgrow their plan, re-plan. (On a CPU
        the `xla` backend may run a native kernel that visits each Gaussian's own
        support box and so never overflows; the tiled GPU path does.)
        '''),
    code('''
        plan = gaussjax.make_plan(g, height, width, backend="xla")
        print(type(plan).__name__)
        img, overflow = gaussjax.rasterize(g, height, width, backend="xla", plan=plan)
        print("overflow with its own plan:", bool(overflow))
        grown = gaussjax.Gaussians(g.means, g.chol * 4.0, g.colors)  # every Gaussian 4x wider
        _, overflow = gaussjax.rasterize(grown, height, width, backend="xla", plan=plan)
        print("overflow after growing the Gaussians:", bool(overflow),
              "| a fresh plan:", gaussjax.make_plan(grown, height, width, backend="xla"))
        '''),
    md('''
        ## A custom loop with `fit_step`

        `fit_step(state, image, config=, plan=)` is one pure Adam step; jit it with
        `config` and `plan` static. A step that overflowed returns the state
        unchanged with `overflow=True`: re-plan and go on. This is what `fit` does,
        written out so you can change it (logging, schedules, your own losses).
        '''),
    code('''
        STEPS = 40 if SMALL else 600
        config = gaussjax.FitConfig(steps=STEPS, backend="xla")
        step_fn = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))

        state = gaussjax.init_fit_state(g, config)
        plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
        curve, replans = [], 0
        while int(state.step) < STEPS:
          if int(state.step) % 50 == 49:  # Gaussians move and grow: refresh the plan now and then
            plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
            replans += 1
          state, metrics = step_fn(state, image, config=config, plan=plan)
          if bool(metrics["overflow"]):
            plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
            replans += 1
            continue
          curve.append(float(metrics["psnr"]))
        print(f"{STEPS} steps, {replans} re-plans, PSNR {curve[0]:.2f} -> {curve[-1]:.2f} dB")
        '''),
    md('''
        ## Your own optax loop, gradients through `render`

        `render` is differentiable with respect to every field (the fast backends
        have hand-written backward passes). Here: an L1 + L2 loss and a plain
        `optax.adam` on colours and means only (chol frozen by `optax.set_to_zero`).
        '''),
    code('''
        def loss_fn(gaussians, image):
          out = gaussjax.render(gaussians, height, width, backend="xla")
          return jnp.mean(jnp.abs(out - image)) + jnp.mean(jnp.square(out - image))

        optimizer = optax.multi_transform(
            {"train": optax.adam(0.02), "freeze": optax.set_to_zero()},
            gaussjax.Gaussians(means="train", chol="freeze", colors="train"))

        @jax.jit
        def train_step(gaussians, opt_state, image):
          loss, grads = jax.value_and_grad(loss_fn)(gaussians, image)
          updates, opt_state = optimizer.update(grads, opt_state, gaussians)
          return optax.apply_updates(gaussians, updates), opt_state, loss

        params, opt_state = g, optimizer.init(g)
        losses = []
        for _ in range(30 if SMALL else 300):
          params, opt_state, loss = train_step(params, opt_state, image)
          losses.append(float(loss))
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; chol unchanged:",
              bool(jnp.all(params.chol == g.chol)))
        '''),
    md('''
        The gradient is the real one: compare `jax.grad` of the mean squared error
        with a central finite difference along a random direction (float32, so
        agreement to a few digits; the L1 term above has kinks, so it is left out
        here), and look at where the loss pulls the Gaussians.
        '''),
    code('''
        def mse(gaussians, image):
          return jnp.mean(jnp.square(gaussjax.render(gaussians, height, width, backend="xla") - image))

        grads = jax.grad(mse)(g, image)
        direction = jax.tree_util.tree_map(
            lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype), g)
        eps = 1e-3
        plus = jax.tree_util.tree_map(lambda x, d: x + eps * d, g, direction)
        minus = jax.tree_util.tree_map(lambda x, d: x - eps * d, g, direction)
        numeric = (mse(plus, image) - mse(minus, image)) / (2 * eps)
        analytic = sum(jnp.vdot(a, d) for a, d in zip(jax.tree_util.tree_leaves(grads),
                                                      jax.tree_util.tree_leaves(direction)))
        print(f"directional derivative: grad {float(analytic):.4e}, finite difference {float(numeric):.4e}")
        assert abs(float(analytic) - float(numeric)) < 0.05 * abs(float(analytic)), "gradient mismatch"

        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(image)
        means, pull = np.asarray(g.means), -np.asarray(grads.means)
        ax.quiver(means[:, 0], means[:, 1], pull[:, 0], -pull[:, 1], color="yellow")
        ax.set_title("-∂MSE/∂means: where each Gaussian wants to go")
        ax.axis("off");
        '''),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_codec.ipynb": CODEC,
    "03_batch.ipynb": BATCH,
    "04_under_the_hood.ipynb": UNDER_THE_HOOD,
}


def build(name: str, cells) -> nbformat.NotebookNode:
  nb = nbformat.v4.new_notebook()
  nb.cells = cells
  nb.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"name": name, "provenance": []},
      "accelerator": "GPU",
  }
  for i, cell in enumerate(nb.cells):
    cell.id = f"{os.path.splitext(name)[0][:2]}-{i:02d}"  # stable ids: clean diffs
  nbformat.validate(nb)
  return nb


def execute(nb: nbformat.NotebookNode, size: str, timeout_s: int = 3600) -> float:
  """Runs ``nb`` in place at ``size`` with this interpreter's kernel; returns the seconds.

  The outputs (figures included) are stored in the notebook, and its metadata
  records the size (``metadata.gaussjax.executed_size``), so that a reader
  knows what the stored pictures show.
  """
  import sys
  import tempfile
  import time

  import nbclient

  with tempfile.TemporaryDirectory() as tmp:
    kernels = os.path.join(tmp, "jupyter", "kernels", "gaussjax-build")
    os.makedirs(kernels)
    with open(os.path.join(kernels, "kernel.json"), "w") as f:
      json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                 "display_name": "gaussjax build", "language": "python"}, f)
    env = {"JUPYTER_PATH": os.path.join(tmp, "jupyter"), "GAUSSJAX_NOTEBOOK_SIZE": size,
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
      nbclient.NotebookClient(nb, kernel_name="gaussjax-build", timeout=timeout_s,
                              allow_errors=False,
                              resources={"metadata": {"path": tmp}}).execute()
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  seconds = time.perf_counter() - start
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  nb.metadata["gaussjax"] = {"executed_size": size, "execute_seconds": round(seconds)}
  return seconds


def main() -> None:
  import argparse
  parser = argparse.ArgumentParser(description="Writes (and optionally executes) the notebooks.")
  parser.add_argument("--execute", choices=("small", "full"), default=None,
                      help="run each notebook at this size and store it with its outputs")
  parser.add_argument("names", nargs="*", help="notebooks to write (default: all)")
  args = parser.parse_args()
  for name, cells in NOTEBOOKS.items():
    if args.names and name not in args.names:
      continue
    path = os.path.join(HERE, name)
    nb = build(name, cells)
    if args.execute:
      print(f"{name}: executed at {args.execute} size in {execute(nb, args.execute):.0f} s")
    with open(path, "w", encoding="utf-8") as f:
      nbformat.write(nb, f)
    print("wrote", os.path.relpath(path))


if __name__ == "__main__":
  main()
