#!/usr/bin/env python3
"""Stage the files of one image recipe into a root directory.

Usage: recipe.py RECIPE.toml ROOT DEBCACHE

A recipe (guest-images/recipes/NAME.toml, format in docs/guest-image.md) names
pinned Debian packages, the files to take from them and symbolic links to
create. Packages are fetched with `apt-get download` into DEBCACHE and
unpacked with `dpkg -x` into a scratch directory; nothing is installed on the
host. Shared libraries of every ELF file taken are found by reading its
PT_INTERP and DT_NEEDED entries (readelf) and looking them up in the unpacked
packages only, recursively; a library that is not there is an error naming
it, so the recipe must list the package that provides it.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"]


def fail(msg):
    sys.exit(f"recipe: error: {msg}")


def log(msg):
    print(f"recipe: {msg}", file=sys.stderr)


def load(path):
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{path}: {e}")
    known = {"description", "packages", "files", "symlinks", "libraries", "busybox_applets"}
    for key in recipe:
        if key not in known:
            fail(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for spec in recipe.get("packages", []):
        if not isinstance(spec, str) or "=" not in spec:
            fail(f"{path}: packages entries must be \"name=version\", got {spec!r}")
    for entry in recipe.get("files", []):
        if not isinstance(entry, dict) or "src" not in entry:
            fail(f"{path}: files entries need src (and optionally dst, mode), got {entry!r}")
    if recipe.get("libraries", "auto") not in ("auto", "none"):
        fail(f"{path}: libraries must be \"auto\" or \"none\"")
    return recipe


def fetch(spec, debcache):
    name, version = spec.split("=", 1)
    os.makedirs(debcache, exist_ok=True)
    wanted = f"{name}_{version.replace(':', '%3a')}_"
    found = [p for p in glob.glob(os.path.join(debcache, f"{name}_*.deb"))
             if os.path.basename(p).startswith(wanted)]
    if not found:
        log(f"apt-get download {spec}")
        r = subprocess.run(["apt-get", "download", spec], cwd=debcache,
                           stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            fail(f"apt-get download {spec} failed:\n{r.stderr.strip()}\n"
                 "(the pinned version may have left the mirror: update the recipe)")
        found = [p for p in glob.glob(os.path.join(debcache, f"{name}_*.deb"))
                 if os.path.basename(p).startswith(wanted)]
        if not found:
            fail(f"apt-get download {spec} produced no {wanted}*.deb")
    deb = sorted(found)[0]
    got = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if got != version:
        fail(f"{deb} has version {got}, recipe pins {version}")
    return deb


def resolve(tree, path, depth=0):
    """Resolves symlinks of an absolute in-image path inside the unpacked tree."""
    if depth > 40:
        fail(f"symlink loop at {path}")
    parts = path.strip("/").split("/")
    cur = ""
    for i, part in enumerate(parts):
        nxt = f"{cur}/{part}"
        full = os.path.join(tree, nxt.lstrip("/"))
        if os.path.islink(full):
            target = os.readlink(full)
            base = target if target.startswith("/") else os.path.normpath(f"{cur}/{target}")
            rest = "/".join(parts[i + 1:])
            return resolve(tree, f"{base}/{rest}" if rest else base, depth + 1)
        cur = nxt
    return cur


def elf_deps(path):
    """Returns (interpreter or None, [needed sonames]) for an ELF file, or None if not ELF."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
    out = subprocess.run(["readelf", "-ldW", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"readelf {path}: {out.stderr.strip()}")
    interp, needed = None, []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("[Requesting program interpreter:"):
            interp = line.split(":", 1)[1].strip(" ]")
        elif "(NEEDED)" in line and "[" in line:
            needed.append(line[line.index("[") + 1:line.index("]")])
    return interp, needed


def copy_in(tree, root, src, dst, mode=None):
    real = resolve(tree, src)
    full = os.path.join(tree, real.lstrip("/"))
    if not os.path.isfile(full):
        fail(f"{src} is not a file in the recipe's packages")
    target = os.path.join(root, dst.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(full, target)
    os.chmod(target, mode if mode is not None else (os.stat(full).st_mode & 0o777))
    return full


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    recipe_path, root, debcache = argv[1], argv[2], os.path.abspath(argv[3])
    recipe = load(recipe_path)
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="simvm-recipe-") as tree:
        for spec in recipe.get("packages", []):
            deb = fetch(spec, debcache)
            subprocess.run(["dpkg", "-x", deb, tree], check=True)

        pending = []
        for entry in recipe.get("files", []):
            src = entry["src"]
            dst = entry.get("dst", src)
            mode = int(entry["mode"], 8) if "mode" in entry else None
            pending.append(copy_in(tree, root, src, dst, mode))

        if recipe.get("libraries", "auto") == "auto":
            done = set()
            while pending:
                deps = elf_deps(pending.pop())
                if deps is None:
                    continue
                interp, needed = deps
                wanted = [interp] if interp else []
                for soname in needed:
                    for d in LIB_DIRS:
                        if os.path.lexists(os.path.join(tree, d, soname)):
                            wanted.append(f"/{d}/{soname}")
                            break
                    else:
                        fail(f"library {soname} is in none of the recipe's packages "
                             f"(searched {', '.join(LIB_DIRS)}); add its package")
                for lib in wanted:
                    if lib in done:
                        continue
                    done.add(lib)
                    if not os.path.lexists(os.path.join(tree, lib.lstrip("/"))):
                        fail(f"interpreter {lib} is in none of the recipe's packages; add libc6")
                    log(f"library {lib}")
                    pending.append(copy_in(tree, root, lib, lib))

        # The list of busybox applets, for init to link at boot: a symlink per applet in the
        # archive would cost ~12 ms of emulated unpacking each, a symlink(2) at boot ~0.2 ms.
        if "busybox_applets" in recipe:
            listing = subprocess.run([os.path.join(root, "bin/busybox"), "--list"],
                                     check=True, capture_output=True, text=True).stdout
            path = os.path.join(root, recipe["busybox_applets"].lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as out:
                out.write("".join(f"{name}\n" for name in sorted(listing.split())))

        for link in recipe.get("symlinks", []):
            path = os.path.join(root, link["path"].lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(link["target"], path)


if __name__ == "__main__":
    main(sys.argv)
