#!/usr/bin/env bash
# Build the simvm guest image: kernel (vmlinux) and initramfs (newc cpio).
#
#   guest-images/build.sh [--recipe NAME] [--compact-kernel] [--print-keys]
#   guest-images/build.sh --recipe-tree NAME [--print-keys]
#
# Results are cached, content-addressed, under ${SIMVM_CACHE_DIR:-$HOME/.cache/simvm}.
# Progress goes to stderr; the last lines of stdout are, exactly:
#   kernel=/abs/path/vmlinux
#   config=/abs/path/.config
#   initramfs=/abs/path/initramfs.cpio
# With --recipe-tree, only the recipe's staged files (for a disk) are built, and the last line
# of stdout is, exactly:
#   tree=/abs/path/dir
# See docs/guest-image.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SIMVM_CACHE_DIR:-$HOME/.cache/simvm}
RECIPE=""
RECIPE_TREE=""
PRINT_KEYS=0
COMPACT_KERNEL=0

# A temporary build directory to remove if the script ends early (also on Ctrl-C / SIGTERM).
TMP_BUILD=""
cleanup() { [[ -z $TMP_BUILD ]] || rm -rf "$TMP_BUILD"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

list_recipes() {
	local f names=()
	for f in "$HERE"/recipes/*.toml; do
		[[ -e $f ]] && names+=("$(basename "$f" .toml)")
	done
	printf '%s' "${names[*]}"
}

usage() {
	cat >&2 <<'EOF'
usage: guest-images/build.sh [--recipe NAME] [--compact-kernel] [--print-keys]
       guest-images/build.sh --recipe-tree NAME [--print-keys]

Builds (or finds in the cache) the simvm guest kernel and initramfs and prints
  kernel=PATH, config=PATH, initramfs=PATH
as the last lines of stdout. --recipe NAME adds guest-images/recipes/NAME.toml
to the base image. --compact-kernel builds the kernel without
guest-images/kernel/speed.config (smaller, slower: for measuring what it saves). --recipe-tree NAME builds only the files the recipe would
add, as a directory for a disk, and prints tree=PATH as the last line.
Cache: ${SIMVM_CACHE_DIR:-$HOME/.cache/simvm}.
EOF
}

while [[ $# -gt 0 ]]; do
	case "$1" in
	--recipe)
		[[ $# -ge 2 ]] || die "--recipe needs a NAME (one of: $(list_recipes))"
		RECIPE=$2
		shift 2
		;;
	--recipe=*)
		RECIPE=${1#--recipe=}
		shift
		;;
	--recipe-tree)
		[[ $# -ge 2 ]] || die "--recipe-tree needs a NAME (one of: $(list_recipes))"
		RECIPE_TREE=$2
		shift 2
		;;
	--recipe-tree=*)
		RECIPE_TREE=${1#--recipe-tree=}
		shift
		;;
	--print-keys)
		PRINT_KEYS=1
		shift
		;;
	--compact-kernel)
		COMPACT_KERNEL=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage
		die "unknown argument: $1"
		;;
	esac
done
[[ -z $RECIPE || -z $RECIPE_TREE ]] ||
	die "--recipe builds an image and --recipe-tree a disk's files: give one of them"

# --- pinned kernel source ------------------------------------------------------
read_version_field() {
	sed -n "s/^$1=//p" "$HERE/kernel/VERSION"
}
KPKG=$(read_version_field package)
KPKG_VERSION=$(read_version_field version)
KVERSION=$(read_version_field kernelversion)
[[ -n $KPKG && -n $KPKG_VERSION && -n $KVERSION ]] || die "guest-images/kernel/VERSION is incomplete"
KTARBALL=/usr/src/${KPKG}.tar.xz

# --- build dependencies (Debian packages) ---------------------------------------------
# The kernel source at its pinned version, not the archive's newest: security updates to the
# package come every few weeks, and each would change the guest kernel under a fixed commit.
DEPS=("$KPKG=$KPKG_VERSION" bc bison flex libelf-dev make gcc libc6-dev binutils patch xz-utils python3 dpkg apt)
# What tools/recipe.py needs on its own (apt-get download, dpkg -x, readelf), for --recipe-tree.
RECIPE_DEPS=(binutils python3 dpkg apt)

# Runs apt-get with the given arguments, as root or through sudo.
apt_get() {
	local sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || die "apt-get $*: run it as root"
		sudo=(sudo)
	fi
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get "$@" >&2
}

# Installs those of the given package specs (NAME, or NAME=VERSION for a pinned version) that
# are not installed; a pinned version replaces whatever version is there, older or newer. One
# dpkg-query answers for all of them: every run checks, and each call costs milliseconds.
install_missing() {
	local missing=() spec name status version
	local -A have=()
	while read -r name status version; do
		[[ $status == installed ]] && have[$name]=$version
	done < <(dpkg-query -W -f='${Package} ${db:Status-Status} ${Version}\n' "${@%%=*}" 2>/dev/null)
	for spec in "$@"; do
		version=${have[${spec%%=*}]:-}
		[[ -n $version && ($spec != *=* || $version == "${spec#*=}") ]] || missing+=("$spec")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "installing build dependencies: ${missing[*]}"
		apt_get update || die "apt-get update failed"
		apt_get install -y --no-install-recommends --allow-downgrades "${missing[@]}" ||
			die "apt-get install ${missing[*]} failed (a pinned version the archive no longer has: pin the one it has, in guest-images/kernel/VERSION, and check the patches apply)"
	fi
}

ensure_deps() {
	install_missing "${DEPS[@]}"
	[[ -f $KTARBALL ]] || die "$KTARBALL not found (package $KPKG)"
}

# --- content keys --------------------------------------------------------------------------
# Key = sha256 over (relative path, sha256) of every input file, plus fixed strings.
hash_inputs() {
	local extra=$1
	shift
	{
		printf '%s\n' "$extra"
		(cd "$HERE" && sha256sum -- "$@")
	} | sha256sum | cut -c1-16
}

# The config fragments merged on top of tinyconfig, in order.
kernel_fragments() {
	printf '%s\n' kernel/simvm.config
	[[ $COMPACT_KERNEL -eq 1 ]] || printf '%s\n' kernel/speed.config
}

kernel_inputs() {
	(cd "$HERE" && printf '%s\n' build.sh kernel/VERSION kernel/required.txt kernel/forbidden.txt \
		kernel/patches/*.patch)
	kernel_fragments
}

initramfs_inputs() {
	(cd "$HERE" && printf '%s\n' build.sh init/*.c helpers/*.c helpers/*.h tools/*.py recipes/base.toml)
}

base_key() {
	# shellcheck disable=SC2046
	hash_inputs "initramfs" $(initramfs_inputs)
}

# A recipe's key: the base key (the tools that stage it) and the recipe file. The recipe's
# archive and its tree share it.
recipe_key() {
	local name=$1 ikey=$2
	hash_inputs "recipe $ikey" "recipes/$name.toml"
}

check_recipe() {
	local name=$1
	[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || die "bad recipe name: $name"
	[[ -f $HERE/recipes/$name.toml ]] ||
		die "no recipe guest-images/recipes/$name.toml (have: $(list_recipes))"
}

# --- kernel -------------------------------------------------------------------------------------
check_config() {
	local config=$1 line opt val bad=0
	while IFS= read -r line; do
		line=${line%%#*}
		line=$(printf '%s' "$line" | tr -d '[:space:]')
		[[ -z $line ]] && continue
		if [[ $line == *=* ]]; then
			opt=${line%%=*} val=${line#*=}
			if ! grep -qx -- "$opt=$val" "$config"; then
				log "config: $opt must be $val, is: $(grep -E "^$opt=|^# $opt is not set" "$config" || echo absent)"
				bad=1
			fi
		elif ! grep -q -- "^$line=" "$config"; then
			log "config: $line must be set"
			bad=1
		fi
	done <"$HERE/kernel/required.txt"
	while IFS= read -r line; do
		line=${line%%#*}
		line=$(printf '%s' "$line" | tr -d '[:space:]')
		line=${line%=y}
		[[ -z $line ]] && continue
		if grep -q -- "^$line=" "$config"; then
			log "config: $line must not be set, is: $(grep -- "^$line=" "$config")"
			bad=1
		fi
	done <"$HERE/kernel/forbidden.txt"
	[[ $bad -eq 0 ]] || die "kernel .config violates guest-images/kernel/required.txt or forbidden.txt"
}

# Every option a fragment sets or unsets must have survived olddefconfig (a dependency can
# silently undo one, and merge_config.sh only warns).
check_fragment_holds() {
	local config=$1 fragment=$2 line opt bad=0
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*) grep -qx -- "$line" "$config" || { log "config: $line did not hold"; bad=1; } ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt% is not set}
			! grep -q -- "^$opt=" "$config" || { log "config: $opt is set, $fragment unsets it"; bad=1; }
			;;
		esac
	done <"$fragment"
	[[ $bad -eq 0 ]] || die "kernel .config does not hold $(basename "$fragment")"
}

build_kernel() {
	local out=$1 tmp src obj patch
	mkdir -p "$CACHE/kernel"
	tmp=$(mktemp -d "$CACHE/kernel/.build.XXXXXX")
	TMP_BUILD=$tmp
	src=$tmp/src obj=$tmp/obj
	mkdir -p "$src" "$obj" "$tmp/out"

	log "kernel: unpacking $KTARBALL"
	tar -xf "$KTARBALL" -C "$src" --strip-components=1
	local mk
	mk=$(sed -n 's/^VERSION = //p;s/^PATCHLEVEL = //p;s/^SUBLEVEL = //p' "$src/Makefile" | paste -sd.)
	[[ $mk == "$KVERSION" ]] || die "$KTARBALL contains Linux $mk, VERSION pins $KVERSION"

	for patch in "$HERE"/kernel/patches/*.patch; do
		[[ -e $patch ]] || continue
		log "kernel: applying $(basename "$patch")"
		patch -d "$src" -p1 --batch --forward --quiet <"$patch" >&2 ||
			die "patch $(basename "$patch") does not apply to $KPKG $KPKG_VERSION"
	done

	local kmake=(make -C "$src" O="$obj" -j"$(nproc)" LOCALVERSION=
		KBUILD_BUILD_USER=simvm KBUILD_BUILD_HOST=simvm KBUILD_BUILD_VERSION=1
		KBUILD_BUILD_TIMESTAMP="2025-01-01 00:00:00 UTC")
	# The speed kernel's compiler flags beyond speed.config's -O2: where the kernel's code is
	# emulated, every executed instruction costs, and -O3 with unrolled loops executes fewer
	# (docs/performance.md "The kernel's compiler and allocator options").
	[[ $COMPACT_KERNEL -eq 1 ]] || kmake+=(KCFLAGS="-O3 -funroll-loops")
	local fragments
	mapfile -t fragments < <(kernel_fragments)
	log "kernel: configuring (tinyconfig + ${fragments[*]})"
	"${kmake[@]}" -s tinyconfig >&2
	(cd "$HERE" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}") \
		>/dev/null 2>&1 || die "merge_config.sh failed"
	"${kmake[@]}" -s olddefconfig >&2
	check_config "$obj/.config"
	[[ $COMPACT_KERNEL -eq 1 ]] || check_fragment_holds "$obj/.config" "$HERE/kernel/speed.config"

	log "kernel: building vmlinux with $(nproc) jobs (about 3 to 8 minutes on 2 cores)"
	local start=$SECONDS
	"${kmake[@]}" -s vmlinux >&2 || die "kernel build failed"
	log "kernel: built in $((SECONDS - start)) s"

	cp "$obj/vmlinux" "$tmp/out/vmlinux"
	cp "$obj/.config" "$tmp/out/.config"
	cp "$obj/System.map" "$tmp/out/System.map"
	publish "$tmp/out" "$out"
	rm -rf "$tmp"
	TMP_BUILD=""
}

# Atomically move a finished directory into place (another build may have won the race).
publish() {
	local from=$1 to=$2
	if ! mv -T "$from" "$to" 2>/dev/null; then
		[[ -d $to ]] || die "cannot publish $to"
		rm -rf "$from"
	fi
}

# --- initramfs ---------------------------------------------------------------------------------------
build_helpers() {
	local dest=$1 c name
	gcc -static -Os -s -Wall -Wextra -Werror -o "$dest/init" "$HERE/init/init.c" >&2 ||
		die "building init/init.c failed"
	for c in "$HERE"/helpers/simvm-*.c; do
		name=$(basename "$c" .c)
		gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -Os -s \
			-Wall -Wextra -Werror -o "$dest/bin/$name" "$c" >&2 ||
			die "building helpers/$name.c failed"
	done
}

build_base_initramfs() {
	local out=$1 tmp
	mkdir -p "$CACHE/initramfs"
	tmp=$(mktemp -d "$CACHE/initramfs/.build.XXXXXX")
	TMP_BUILD=$tmp
	mkdir -p "$tmp/root/bin" "$tmp/out"
	log "initramfs: building init and helpers"
	build_helpers "$tmp/root"
	log "initramfs: adding recipes/base.toml"
	python3 "$HERE/tools/recipe.py" "$HERE/recipes/base.toml" "$tmp/root" "$CACHE/debs" >&2 ||
		die "recipe base.toml failed"
	python3 "$HERE/tools/mkcpio.py" "$tmp/out/initramfs.cpio" "$tmp/root" --nod dev/console:0600:c:5:1 >&2 ||
		die "writing the base cpio failed"
	publish "$tmp/out" "$out"
	rm -rf "$tmp"
	TMP_BUILD=""
}

build_recipe_initramfs() {
	local base=$1 recipe_file=$2 out=$3 tmp
	tmp=$(mktemp -d "$CACHE/initramfs/.build.XXXXXX")
	TMP_BUILD=$tmp
	mkdir -p "$tmp/root" "$tmp/out"
	log "initramfs: adding recipes/$RECIPE.toml"
	python3 "$HERE/tools/recipe.py" "$recipe_file" "$tmp/root" "$CACHE/debs" >&2 ||
		die "recipe $RECIPE.toml failed"
	python3 "$HERE/tools/mkcpio.py" "$tmp/recipe.cpio" "$tmp/root" >&2 ||
		die "writing the recipe cpio failed"
	# The image is the base archive followed by the recipe archive; the kernel
	# unpacks concatenated archives in order.
	cat "$base" "$tmp/recipe.cpio" >"$tmp/out/initramfs.cpio"
	publish "$tmp/out" "$out"
	rm -rf "$tmp"
	TMP_BUILD=""
}

# --- recipe trees ------------------------------------------------------------------------------
# The files, libraries and loader a recipe would add to the initramfs, as a directory: simvm makes an
# ext4 disk of it, and a machine booting the base image reads them from that disk on demand instead
# of unpacking them all at boot.
build_recipe_tree() {
	local name=$1 out=$2 tmp
	mkdir -p "$CACHE/recipe-trees"
	tmp=$(mktemp -d "$CACHE/recipe-trees/.build.XXXXXX")
	TMP_BUILD=$tmp
	log "recipe tree: staging recipes/$name.toml"
	# Directory modes follow the umask, and the disk image copies them: fix it, so that every
	# host stages the same tree.
	(umask 022 && mkdir "$tmp/tree" &&
		python3 "$HERE/tools/recipe.py" "$HERE/recipes/$name.toml" "$tmp/tree" "$CACHE/debs") >&2 ||
		die "recipe $name.toml failed"
	publish "$tmp/tree" "$out"
	rm -rf "$tmp"
	TMP_BUILD=""
}

main_recipe_tree() {
	check_recipe "$RECIPE_TREE"
	install_missing "${RECIPE_DEPS[@]}"
	mkdir -p "$CACHE"
	CACHE=$(cd "$CACHE" && pwd)

	local rkey tdir
	rkey=$(recipe_key "$RECIPE_TREE" "$(base_key)")
	tdir=$CACHE/recipe-trees/$RECIPE_TREE-$rkey
	if [[ $PRINT_KEYS -eq 1 ]]; then
		printf 'recipe-key=%s\n' "$rkey"
	fi
	if [[ -d $tdir ]]; then
		log "recipe tree: $RECIPE_TREE cached ($rkey)"
	else
		build_recipe_tree "$RECIPE_TREE" "$tdir"
	fi
	printf 'tree=%s\n' "$tdir"
}

main() {
	if [[ -n $RECIPE_TREE ]]; then
		main_recipe_tree
		return
	fi
	ensure_deps
	mkdir -p "$CACHE"
	CACHE=$(cd "$CACHE" && pwd)

	local kkey ikey kdir idir
	# shellcheck disable=SC2046
	kkey=$(hash_inputs "kernel $KPKG $KPKG_VERSION" $(kernel_inputs))
	[[ $COMPACT_KERNEL -eq 0 ]] || kkey=compact-$kkey
	ikey=$(base_key)
	kdir=$CACHE/kernel/$kkey
	idir=$CACHE/initramfs/base-$ikey

	if [[ -n $RECIPE ]]; then
		check_recipe "$RECIPE"
	fi

	if [[ $PRINT_KEYS -eq 1 ]]; then
		printf 'kernel-key=%s\ninitramfs-key=%s\n' "$kkey" "$ikey"
	fi

	if [[ -f $kdir/vmlinux ]]; then
		log "kernel: cached ($kkey)"
	else
		build_kernel "$kdir"
	fi
	if [[ -f $idir/initramfs.cpio ]]; then
		log "initramfs: base cached ($ikey)"
	else
		build_base_initramfs "$idir"
	fi

	local image=$idir/initramfs.cpio
	if [[ -n $RECIPE ]]; then
		local rkey rdir
		rkey=$(recipe_key "$RECIPE" "$ikey")
		rdir=$CACHE/initramfs/$RECIPE-$rkey
		if [[ -f $rdir/initramfs.cpio ]]; then
			log "initramfs: $RECIPE cached ($rkey)"
		else
			build_recipe_initramfs "$image" "$HERE/recipes/$RECIPE.toml" "$rdir"
		fi
		image=$rdir/initramfs.cpio
	fi

	printf 'kernel=%s\n' "$kdir/vmlinux"
	printf 'config=%s\n' "$kdir/.config"
	printf 'initramfs=%s\n' "$image"
}

main
