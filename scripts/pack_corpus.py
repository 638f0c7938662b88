"""Copy a subset of a Slakh-layout corpus with stems transcoded to Ogg Vorbis.

Used to carry training audio to a remote GPU machine whose upload is size-limited (~1 MB per
40 s five-stem track instead of ~6 MB of 24-bit FLAC). Tracks are picked evenly over the sorted
track list. The reader (`stemstream.data.slakh`) reads .ogg stems like .flac ones.

    python scripts/pack_corpus.py corpora/synth20h .gpudata/corpus --train 38 --validation 6
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--train", type=int, default=38)
    parser.add_argument("--validation", type=int, default=6)
    parser.add_argument(
        "--quality",
        type=float,
        default=0.4,
        help="libsndfile Vorbis compression level (0 best .. 1 smallest)",
    )
    args = parser.parse_args()
    shutil.rmtree(args.dst, ignore_errors=True)
    for split, count in (("train", args.train), ("validation", args.validation)):
        tracks = sorted(
            p for p in (args.src / split).iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        for index in np.linspace(0, len(tracks) - 1, count).astype(int):
            track = tracks[index]
            out = args.dst / split / track.name
            (out / "stems").mkdir(parents=True)
            shutil.copy(track / "metadata.yaml", out / "metadata.yaml")
            for stem in sorted((track / "stems").glob("*.flac")):
                data, sr = sf.read(str(stem), dtype="float32")
                sf.write(
                    str(out / "stems" / f"{stem.stem}.ogg"),
                    data,
                    sr,
                    format="OGG",
                    subtype="VORBIS",
                    compression_level=args.quality,
                )
    print(f"packed {args.train} + {args.validation} tracks into {args.dst}")


if __name__ == "__main__":
    main()
