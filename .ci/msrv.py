"""MSRV check without the old toolchain (rustup cannot download one here).

Our own code is held to `rust-version` by clippy's `incompatible_msrv` lint (on by default,
run with -D warnings); this script holds every resolved dependency to it: none may declare a
newer `rust-version` than ours.
"""
import json
import subprocess
import sys

metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)


def version(text):
    """1.88 and 1.88.0 are the same version."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


ours = next(p for p in metadata["packages"] if p["name"] == "turnflow")["rust_version"]
newer = [
    f'{p["name"]} {p["version"]} needs rust {p["rust_version"]}'
    for p in metadata["packages"]
    if p.get("rust_version") and version(p["rust_version"]) > version(ours)
]
if newer:
    print(f"dependencies newer than our rust-version {ours}:", *newer, sep="\n  ")
    sys.exit(1)
print(f"every dependency builds with rust {ours} (declared rust-version)")
