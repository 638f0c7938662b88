"""Add the codec's tokens hash to model checkpoints and token dumps made before it existed.

A record made before ``tokens_hash`` was added names its codec only by ``weights_hash`` (all
weights), so a codec whose decoder alone was fine-tuned afterwards — same tokens, new audio —
would be refused. This script proves which codec made a record (its weights hash must equal
``--codec``'s, i.e. the codec *before* the decoder fine-tune) and then records that codec's
tokens hash beside it. Nothing else changes; run it before switching the codec.

    python scripts/record_tokens_hash.py --codec OLD_CODEC RECORD [RECORD ...]

RECORD: a ``.safetensors`` checkpoint (model or training) or a token-dump directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stemstream import checkpoint
from stemstream.codec.registry import get_codec


def add_tokens_hash(recorded: dict, identity: dict, where: str) -> dict:
    """``recorded`` plus ``identity``'s tokens hash, after checking they are the same codec."""
    if recorded.get("weights_hash") != identity["weights_hash"]:
        raise SystemExit(
            f"{where}: made with codec weights {recorded.get('weights_hash')}, not "
            f"{identity['weights_hash']} (--codec); refusing to vouch for its tokens"
        )
    return recorded | {"tokens_hash": identity["tokens_hash"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", required=True, help="the codec the records were made with")
    parser.add_argument("records", nargs="+", type=Path)
    args = parser.parse_args(argv)
    identity = get_codec(args.codec).codec_identity()
    for path in args.records:
        if path.is_dir():
            meta_path = path / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["codec"] = add_tokens_hash(meta["codec"], identity, str(path))
            meta_path.write_text(json.dumps(meta, indent=2))
        else:
            tensors, meta = checkpoint.load(path)
            meta["codec"] = add_tokens_hash(meta["codec"], identity, str(path))
            checkpoint.save(path, tensors, meta)
        print(f"{path}: tokens_hash {identity['tokens_hash']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
