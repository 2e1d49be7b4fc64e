"""Installs, offline, the carried wheels (target/gpu-wheels, made by scripts/gpu-wheels) whose
packages this Python lacks, into a folder that goes on PYTHONPATH.

    python -m gpu_check.install_wheels --wheels target/gpu-wheels --target DIR [--force]

Why a --target folder and not `python3 -m venv --system-site-packages`: on the lent GPU machines
python3 is itself a virtual environment (/opt/torch/.venv), and a venv made from it sees the base
interpreter's site-packages, not that venv's, so torch would vanish. Only missing packages are
installed (and diffusers always, unless its wanted version is already importable), with --no-deps,
so nothing preinstalled is shadowed. Without pip, pure-Python wheels are unzipped directly.
"""

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import zipfile

WANT = {"diffusers": "0.42.1"}  # exactly this version (the committed fixtures')
AT_LEAST = {"zipp": (3, 20)}  # importlib_metadata 10's floor; an older preinstalled one is shadowed


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(filename):
    """(distribution, version, python tag) from a wheel's file name."""
    parts = filename[:-4].split("-")
    return norm(parts[0]), parts[1], parts[-3]


def compatible(tag):
    """A wheel's python tag fits this interpreter (py3, or cpXY of this very version)."""
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return any(t in ("py3", here) for t in tag.split("."))


def too_old(dist, have):
    floor = AT_LEAST.get(dist)
    nums = tuple(int(x) for x in re.findall(r"\d+", have)[:2])
    return floor is not None and nums < floor


def installed(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--force", action="store_true", help="install every carried package (a test of this path)")
    a = ap.parse_args()

    wheels = sorted(f for f in os.listdir(a.wheels) if f.endswith(".whl")) if os.path.isdir(a.wheels) else []
    chosen, kept = [], {}
    for f in wheels:
        dist, version, tag = wheel_name(f)
        have = installed(dist)
        if not compatible(tag):
            continue
        if a.force or have is None or (dist in WANT and have != WANT[dist]) or too_old(dist, have):
            chosen.append(f)
        else:
            kept[dist] = have
    res = {"python": sys.version.split()[0], "executable": sys.executable, "target": a.target,
           "preinstalled": kept, "installed": [], "method": None}
    if not chosen:
        res["method"] = "nothing to install"
    else:
        os.makedirs(a.target, exist_ok=True)
        paths = [os.path.join(a.wheels, f) for f in chosen]
        pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
        if pip:
            res["method"] = "pip --no-index --no-deps --target"
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--disable-pip-version-check", "--upgrade", "--target", a.target, *paths], check=True)
        else:
            res["method"] = "unzip (no pip)"
            for p in paths:
                with zipfile.ZipFile(p) as z:
                    z.extractall(a.target)
        res["installed"] = chosen
    missing = sorted(d for d in WANT if installed(d) is None and not any(wheel_name(f)[0] == d for f in chosen))
    if missing:
        res["error"] = f"not importable and not carried in {a.wheels}: {missing} (run scripts/gpu-wheels)"
    print(json.dumps(res), flush=True)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
