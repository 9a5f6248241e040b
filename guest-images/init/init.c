// SPDX-License-Identifier: Apache-2.0
/*
 * /init of the simvm guest image.
 *
 * Implements the guest side of "Machine identity" and "Per-machine boot data"
 * in docs/guest-abi.md: mount the pseudo filesystems, fetch the machine's
 * boot data from /sys/kernel/simvm/identity and unpack it into /, set the
 * hostname, configure lo and eth0 (with the machine's MAC), mount the disks
 * of /simvm/disks, report READY, run the command from /simvm/argv (default
 * /bin/sh) on /dev/console, report its exit status and power off. `reboot`,
 * `poweroff` and `halt` (busybox, without -f) signal init, which then shuts
 * the machine down the same way, restarting it for `reboot`.
 *
 * The identity fetch is where a machine template is snapshotted: every
 * machine restored from it resumes inside that read. So nothing before it
 * may depend on the machine, and everything after it must assume that the
 * kernel booted as another machine: the driver holds the template's MAC and
 * the block layer may cache blocks of the template's disks.
 *
 * Everything is done with system calls from this one process: fork+exec
 * costs about 0.4 s of wall time in an emulated guest kernel, so no shell
 * scripts or helper programs are run. Statically linked (gcc -static -Os).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include "../helpers/hex.h"

#define MACHINE_FILE "/simvm/machine"
#define DISKS_FILE "/simvm/disks"
#define ARGV_FILE "/simvm/argv"
#define ENVIRON_FILE "/simvm/environ"
#define HOSTNAME_FILE "/etc/hostname"
#define READY_FILE "/sys/kernel/simvm/ready"
#define APPLET_LIST "/etc/busybox.applets"
#define EXIT_STATUS_FILE "/sys/kernel/simvm/exit_status"
#define IDENTITY_FILE "/sys/kernel/simvm/identity"

/*
 * The guest kernel runs with `noxsave`, so only the FXSAVE state (x87/SSE)
 * is saved across context switches, while the CPU may still execute AVX
 * instructions natively in user mode (PVM keeps the host's XCR0, and CPUID
 * shows the host's features). Programs are told not to use AVX or XSAVE:
 * glibc 2.36 through its hwcaps tunable (-OSXSAVE alone already disables the
 * whole AVX family and XSAVE in the lazy-binding trampoline; the rest is
 * spelled out so the intent survives glibc changes), Go through GODEBUG
 * (internal/cpu option names known since Go 1.10; unknown names would make
 * older Go runtimes print a warning).
 */
#define GLIBC_TUNABLES_VALUE                                                   \
	"glibc.cpu.hwcaps=-OSXSAVE,-XSAVE,-XSAVEC,-AVX,-AVX2,-FMA,-AVX512F,"   \
	"-AVX512BW,-AVX512CD,-AVX512DQ,-AVX512VL"
#define GODEBUG_VALUE "cpu.avx=off,cpu.avx2=off,cpu.fma=off"

static void msg(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "simvm-init: ");
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf) - 1)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(2, buf, (size_t)n) < 0) {
		/* Nothing left to report to. */
	}
}

static void mount_fs(const char *src, const char *dir, const char *type,
		     unsigned long flags, const char *data)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, flags, data) != 0 && errno != EBUSY)
		msg("mount %s on %s: %s", type, dir, strerror(errno));
}

/* Reads a whole small file; returns its length or -1. Always NUL-terminates. */
static ssize_t read_file(const char *path, char **out)
{
	size_t cap = 4096, len = 0;
	char *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n;

		if (buf == NULL || len + 1 >= cap) {
			char *nbuf;

			if (buf != NULL)
				cap *= 2;
			nbuf = realloc(buf, cap);
			if (nbuf == NULL) {
				free(buf);
				close(fd);
				return -1;
			}
			buf = nbuf;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	*out = buf;
	return (ssize_t)len;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

struct machine {
	char name[65];
	char index[16];
	char machines[16];
	char incarnation[16];
	char ip[32];
	char mac[32];
};

static void copy_value(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void parse_machine(struct machine *m)
{
	char *text, *line, *save = NULL;

	memset(m, 0, sizeof(*m));
	if (read_file(MACHINE_FILE, &text) < 0)
		return;
	for (line = strtok_r(text, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		if (strcmp(line, "name") == 0)
			copy_value(m->name, sizeof(m->name), eq + 1);
		else if (strcmp(line, "index") == 0)
			copy_value(m->index, sizeof(m->index), eq + 1);
		else if (strcmp(line, "machines") == 0)
			copy_value(m->machines, sizeof(m->machines), eq + 1);
		else if (strcmp(line, "incarnation") == 0)
			copy_value(m->incarnation, sizeof(m->incarnation), eq + 1);
		else if (strcmp(line, "ip") == 0)
			copy_value(m->ip, sizeof(m->ip), eq + 1);
		else if (strcmp(line, "mac") == 0)
			copy_value(m->mac, sizeof(m->mac), eq + 1);
	}
	free(text);
}

static void set_hostname(const struct machine *m)
{
	char *text = NULL;
	const char *name = m->name;
	size_t n;

	if (read_file(HOSTNAME_FILE, &text) > 0) {
		text[strcspn(text, " \t\r\n")] = '\0';
		if (text[0] != '\0')
			name = text;
	}
	n = strlen(name);
	if (n > 0 && sethostname(name, n) != 0)
		msg("sethostname: %s", strerror(errno));
	free(text);
}

static int if_up(int sock, const char *ifname)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	copy_value(ifr.ifr_name, IFNAMSIZ, ifname);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

static int if_set_addr(int sock, const char *ifname, unsigned long req,
		       in_addr_t addr)
{
	struct ifreq ifr;
	struct sockaddr_in sin;

	memset(&ifr, 0, sizeof(ifr));
	memset(&sin, 0, sizeof(sin));
	copy_value(ifr.ifr_name, IFNAMSIZ, ifname);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = addr;
	memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
	return ioctl(sock, req, &ifr);
}

/* Parses "aa:bb:cc:dd:ee:ff"; 0 if well formed. */
static int parse_mac(const char *text, unsigned char mac[6])
{
	for (int i = 0; i < 6; i++, text += 3) {
		int hi = hex_digit(text[0]);
		int lo = hi < 0 ? -1 : hex_digit(text[1]);

		if (lo < 0 || text[2] != (i == 5 ? '\0' : ':'))
			return -1;
		mac[i] = (unsigned char)(hi << 4 | lo);
	}
	return 0;
}

/*
 * The virtio-net driver read its MAC from the device at probe, which for a
 * machine restored from a template was the template's: set the machine's own
 * before the interface comes up, so no frame ever leaves with the template's.
 */
static void if_set_mac(int sock, const char *ifname, const char *text)
{
	struct ifreq ifr;
	unsigned char mac[6];

	if (parse_mac(text, mac) != 0) {
		msg("bad mac %s", text);
		return;
	}
	memset(&ifr, 0, sizeof(ifr));
	copy_value(ifr.ifr_name, IFNAMSIZ, ifname);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, mac, sizeof(mac));
	if (ioctl(sock, SIOCSIFHWADDR, &ifr) != 0)
		msg("%s mac %s: %s", ifname, text, strerror(errno));
}

/*
 * lo always; eth0 with "ip=A.B.C.D/N" when given, with the MAC of "mac=".
 * lo gets 127.0.0.1/8 from the kernel.
 */
static void setup_network(const struct machine *m)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	char addr[32];
	char *slash;
	struct in_addr in;
	long prefix = 24;
	in_addr_t mask;

	if (sock < 0) {
		msg("socket: %s", strerror(errno));
		return;
	}
	if (if_up(sock, "lo") != 0)
		msg("lo up: %s", strerror(errno));
	if (m->mac[0] != '\0')
		if_set_mac(sock, "eth0", m->mac);
	if (m->ip[0] == '\0')
		goto out;
	copy_value(addr, sizeof(addr), m->ip);
	slash = strchr(addr, '/');
	if (slash != NULL) {
		*slash = '\0';
		prefix = strtol(slash + 1, NULL, 10);
	}
	if (inet_pton(AF_INET, addr, &in) != 1 || prefix < 0 || prefix > 32) {
		msg("bad ip %s", m->ip);
		goto out;
	}
	mask = prefix == 0 ? 0 : htonl(0xffffffffu << (32 - prefix));
	if (if_set_addr(sock, "eth0", SIOCSIFADDR, in.s_addr) != 0 ||
	    if_set_addr(sock, "eth0", SIOCSIFNETMASK, mask) != 0 ||
	    if_up(sock, "eth0") != 0)
		msg("eth0 %s: %s", m->ip, strerror(errno));
out:
	close(sock);
}

/*
 * Disks: /simvm/disks has one line per disk, "DEVICE MOUNTPOINT FSTYPE"
 * separated by single spaces (e.g. "vda /data ext4"). Each is mounted with no
 * special flags, so ext4 replays its journal as on any Linux machine after a
 * crash. The file comes from the VMM, but a malformed line only costs a
 * message: the command then sees the missing mount.
 */
#define MAX_DISKS 16
#define DISKS_MAX_BYTES 4096
#define MOUNTPOINT_MAX 256

struct disk {
	char device[32];
	char mountpoint[MOUNTPOINT_MAX];
	char fstype[16];
};

/* Disks mounted, in order, for unmounting at shutdown. */
static struct disk mounted[MAX_DISKS];
static int mounted_count;

/* Reads at most cap - 1 bytes of a file into buf, NUL-terminated; returns the length or -1. */
static ssize_t read_small_file(const char *path, char *buf, size_t cap)
{
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while (len + 1 < cap) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

/* Copies a field of [A-Za-z0-9_-] characters (plus '.' and '/' when path) bounded by cap; 0 if valid. */
static int take_field(char *dst, size_t cap, const char *src, int path)
{
	size_t n = strlen(src);

	if (n == 0 || n >= cap)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = src[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-' ||
		      (path && (c == '/' || c == '.'))))
			return -1;
	}
	memcpy(dst, src, n + 1);
	return 0;
}

/* Parses "DEVICE MOUNTPOINT FSTYPE"; 0 if well formed. */
static int parse_disk(char *line, struct disk *d)
{
	char *mnt = strchr(line, ' '), *fstype;

	if (mnt == NULL)
		return -1;
	*mnt++ = '\0';
	fstype = strchr(mnt, ' ');
	if (fstype == NULL)
		return -1;
	*fstype++ = '\0';
	if (take_field(d->device, sizeof(d->device), line, 0) != 0 ||
	    take_field(d->mountpoint, sizeof(d->mountpoint), mnt, 1) != 0 ||
	    take_field(d->fstype, sizeof(d->fstype), fstype, 0) != 0)
		return -1;
	/* An absolute path; no component may start with '.' (no "." or ".."). */
	if (d->mountpoint[0] != '/' || strstr(d->mountpoint, "/.") != NULL)
		return -1;
	return 0;
}

/* Creates the missing parent directories of an absolute path, mode 0755; errors show up later. */
static void make_parents(const char *path)
{
	char buf[PATH_MAX];

	copy_value(buf, sizeof(buf), path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(buf, 0755);
		*p = '/';
	}
}

/* mkdir -p with mode 0755; errors show up at mount time. */
static void make_dirs(const char *path)
{
	make_parents(path);
	mkdir(path, 0755);
}

/*
 * Drops the block device's page cache. A machine restored from a template
 * inherits the cache its kernel filled at boot (the partition scan reads the
 * first blocks), which holds the template's disk, not this machine's.
 */
static void flush_block_cache(const char *devpath)
{
	int fd = open(devpath, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) != 0)
		msg("flush %s: %s", devpath, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void mount_disks(void)
{
	static char text[DISKS_MAX_BYTES + 2];
	char *line, *next;
	int lineno = 0;
	ssize_t len = read_small_file(DISKS_FILE, text, sizeof(text));

	if (len < 0)
		return;
	if (len > DISKS_MAX_BYTES) {
		/* Keep the complete lines of the first DISKS_MAX_BYTES bytes. */
		char *end;

		text[DISKS_MAX_BYTES] = '\0';
		end = strrchr(text, '\n');
		*(end != NULL ? end + 1 : text) = '\0';
		msg("%s: longer than %d bytes, the rest is ignored", DISKS_FILE,
		    DISKS_MAX_BYTES);
	}
	for (line = text; *line != '\0'; line = next) {
		struct disk *d;
		char devpath[48];

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		else
			next = line + strlen(line);
		lineno++;
		if (line[0] == '\0')
			continue;
		if (mounted_count == MAX_DISKS) {
			msg("%s: more than %d disks, the rest is ignored", DISKS_FILE,
			    MAX_DISKS);
			break;
		}
		d = &mounted[mounted_count];
		if (parse_disk(line, d) != 0) {
			msg("%s line %d: not \"DEVICE MOUNTPOINT FSTYPE\", ignored",
			    DISKS_FILE, lineno);
			continue;
		}
		snprintf(devpath, sizeof(devpath), "/dev/%s", d->device);
		flush_block_cache(devpath);
		make_dirs(d->mountpoint);
		if (mount(devpath, d->mountpoint, d->fstype, 0, NULL) != 0) {
			msg("mount %s on %s (%s): %s", devpath, d->mountpoint,
			    d->fstype, strerror(errno));
			continue;
		}
		mounted_count++;
	}
}

/*
 * Unmounts the disks in reverse order, so their filesystems are clean on
 * the next boot. Called with every other process gone; if a disk is still
 * busy anyway, it is at least remounted read-only (sync() came first).
 */
static void unmount_disks(void)
{
	for (int i = mounted_count - 1; i >= 0; i--) {
		const char *mnt = mounted[i].mountpoint;

		if (umount(mnt) == 0)
			continue;
		if (mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL) != 0)
			msg("umount %s: %s", mnt, strerror(errno));
	}
}

/*
 * The machine's identity (docs/guest-abi.md, "Machine identity"): the kernel
 * fetches the per-machine boot data from the VMM at the first read of
 * IDENTITY_FILE, as a newc cpio archive of at most 64 KiB - 64 bytes, which
 * is unpacked into / here: directories and regular files only. Its names
 * come without a leading '/'; one is accepted too.
 */
#define IDENTITY_MAX 65536
#define CPIO_HEADER_LEN 110 /* "070701" and 13 fields of 8 hex digits */

/* Reads the whole identity archive; its length, or -1 with errno set. */
static ssize_t read_identity(char *buf, size_t cap)
{
	size_t len = 0;
	int fd = open(IDENTITY_FILE, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n;

		if (len == cap) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = errno;

			close(fd);
			errno = err;
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	return (ssize_t)len;
}

/* Field i (0-12) of a newc header, 8 hex digits; -1 if malformed. */
static long cpio_field(const char *hdr, int i)
{
	long value = 0;

	for (int k = 0; k < 8; k++) {
		int d = hex_digit(hdr[6 + 8 * i + k]);

		if (d < 0)
			return -1;
		value = value << 4 | d;
	}
	return value;
}

/* "/" + name without its leading '/'s; -1 if empty, too long or with a ".." component. */
static int entry_path(char *path, size_t cap, const char *name)
{
	while (*name == '/')
		name++;
	if (*name == '\0')
		return -1;
	for (const char *p = name; *p != '\0';) {
		size_t n = strcspn(p, "/");

		if (n == 2 && p[0] == '.' && p[1] == '.')
			return -1;
		p += n;
		p += strspn(p, "/");
	}
	return snprintf(path, cap, "/%s", name) < (int)cap ? 0 : -1;
}

/* Creates or truncates path and writes data; 0, or -1 with errno set. */
static int write_whole(const char *path, const char *data, size_t len,
		       mode_t perm)
{
	/* O_NOFOLLOW: a file lands where the archive names it, never elsewhere. */
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		      perm);

	if (fd < 0)
		return -1;
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			close(fd);
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	/* open() applied the umask, or kept the mode of an existing file. */
	if (fchmod(fd, perm) != 0) {
		close(fd);
		return -1;
	}
	return close(fd);
}

static void unpack_entry(const char *name, long mode, const char *data,
			 size_t size)
{
	char path[PATH_MAX];
	mode_t perm = (mode_t)mode & 07777;

	if (entry_path(path, sizeof(path), name) != 0) {
		msg("%s: bad name \"%s\", skipped", IDENTITY_FILE, name);
		return;
	}
	make_parents(path);
	if (S_ISDIR(mode)) {
		if (mkdir(path, perm) != 0 && errno != EEXIST)
			msg("mkdir %s: %s", path, strerror(errno));
	} else if (S_ISREG(mode)) {
		if (write_whole(path, data, size, perm) != 0)
			msg("%s: %s", path, strerror(errno));
	} else {
		msg("%s: %s is not a directory or regular file, skipped",
		    IDENTITY_FILE, path);
	}
}

/* Unpacks a newc archive into / up to its TRAILER!!!; stops at the first malformed entry. */
static void unpack_cpio(const char *buf, size_t len)
{
	size_t pos = 0;

	for (;;) {
		const char *hdr, *name;
		long mode, size, namesize;
		size_t data;

		if (pos > len || len - pos < CPIO_HEADER_LEN) {
			msg("%s: archive ends without TRAILER!!!", IDENTITY_FILE);
			return;
		}
		hdr = buf + pos;
		name = hdr + CPIO_HEADER_LEN;
		mode = cpio_field(hdr, 1);
		size = cpio_field(hdr, 6);
		namesize = cpio_field(hdr, 11);
		if ((memcmp(hdr, "070701", 6) != 0 && memcmp(hdr, "070702", 6) != 0) ||
		    mode < 0 || size < 0 || namesize < 1 ||
		    (size_t)namesize > len - pos - CPIO_HEADER_LEN ||
		    name[namesize - 1] != '\0') {
			msg("%s: bad cpio header at byte %zu", IDENTITY_FILE, pos);
			return;
		}
		/* Name and data are each padded to a multiple of 4 bytes. */
		data = (pos + CPIO_HEADER_LEN + (size_t)namesize + 3) & ~(size_t)3;
		if (data > len || (size_t)size > len - data) {
			msg("%s: cpio entry at byte %zu runs past the end",
			    IDENTITY_FILE, pos);
			return;
		}
		if (strcmp(name, "TRAILER!!!") == 0)
			return;
		unpack_entry(name, mode, buf + data, (size_t)size);
		pos = (data + (size_t)size + 3) & ~(size_t)3;
	}
}

/*
 * Fetches and unpacks the identity. Without simvm the file does not exist and
 * the boot data, if any, came with the initramfs. Any error costs a message
 * and whatever did not get unpacked: the rest of the boot goes on.
 */
static void fetch_identity(void)
{
	static char archive[IDENTITY_MAX];
	ssize_t len = read_identity(archive, sizeof(archive));

	if (len < 0) {
		if (errno != ENOENT)
			msg("%s: %s", IDENTITY_FILE, strerror(errno));
		return;
	}
	unpack_cpio(archive, (size_t)len);
}

/* Splits a buffer of NUL-terminated strings into a NULL-terminated vector. */
static char **split_nul(char *buf, size_t len, size_t extra)
{
	size_t count = 0, i, k = 0;
	char **vec;

	for (i = 0; i < len; i++)
		if (buf[i] == '\0')
			count++;
	if (len > 0 && buf[len - 1] != '\0')
		count++; /* tolerate a missing final NUL; read_file added one */
	vec = calloc(count + extra + 1, sizeof(char *));
	if (vec == NULL)
		return NULL;
	for (i = 0; i < len; i += strlen(buf + i) + 1)
		vec[k++] = buf + i;
	return vec;
}

static void put_env(const char *key, const char *value)
{
	if (value != NULL && value[0] != '\0')
		setenv(key, value, 1);
}

static void build_environment(const struct machine *m)
{
	char *text;
	ssize_t len;

	clearenv();
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	setenv("HOME", "/root", 1);
	setenv("TERM", "vt100", 1);
	setenv("GLIBC_TUNABLES", GLIBC_TUNABLES_VALUE, 1);
	setenv("GODEBUG", GODEBUG_VALUE, 1);
	put_env("SIMVM_MACHINE", m->name);
	put_env("SIMVM_INDEX", m->index);
	put_env("SIMVM_MACHINES", m->machines);
	put_env("SIMVM_INCARNATION", m->incarnation);

	len = read_file(ENVIRON_FILE, &text);
	if (len > 0) {
		char **vec = split_nul(text, (size_t)len, 0);

		for (size_t i = 0; vec != NULL && vec[i] != NULL; i++) {
			char *eq = strchr(vec[i], '=');

			if (eq == NULL || eq == vec[i])
				continue;
			*eq = '\0';
			setenv(vec[i], eq + 1, 1);
		}
		/* setenv copied the strings; text and vec may leak, init is short-lived. */
	}
}

static char **command_argv(void)
{
	static char *default_argv[] = { "/bin/sh", NULL };
	char *text;
	ssize_t len = read_file(ARGV_FILE, &text);
	char **vec;

	if (len <= 0)
		return default_argv;
	vec = split_nul(text, (size_t)len, 0);
	if (vec == NULL || vec[0] == NULL || vec[0][0] == '\0')
		return default_argv;
	return vec;
}

static void console_stdio(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);

	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

/*
 * Shutdown requests. busybox `reboot`, `poweroff` and `halt` (without -f)
 * ask init with SIGTERM, SIGUSR2 and SIGUSR1, as they would ask busybox
 * init. The handlers only record the request; the wait loop acts on it.
 * These signals and SIGCHLD stay blocked except inside sigsuspend(), so a
 * request or a child's exit can never slip in between checking for it and
 * going to sleep.
 */
static volatile sig_atomic_t shutdown_request; /* 0 or an RB_* command */

static void on_shutdown_signal(int sig)
{
	shutdown_request = sig == SIGTERM ? RB_AUTOBOOT : RB_POWER_OFF;
}

static void on_sigchld(int sig)
{
	(void)sig; /* only wakes sigsuspend(); waitpid() does the reaping */
}

/* Installs the handlers and blocks their signals; *waitmask gets the mask to wait with. */
static void setup_signals(sigset_t *waitmask)
{
	struct sigaction sa;
	sigset_t block;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_shutdown_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_handler = on_sigchld;
	sa.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGCHLD);
	sigprocmask(SIG_BLOCK, &block, waitmask);
}

static pid_t start_command(char **argv)
{
	sigset_t none;
	pid_t pid = fork();

	if (pid != 0)
		return pid;

	/* Child: own session with the console as controlling terminal. */
	setsid();
	console_stdio();
	ioctl(0, TIOCSCTTY, 0);
	if (chdir("/root") != 0 && chdir("/") != 0) {
		/* Keep the current directory. */
	}
	/* exec resets init's handlers, but not ignored signals or the mask. */
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execvp(argv[0], argv);
	msg("exec %s: %s", argv[0], strerror(errno));
	_exit(errno == ENOENT ? 127 : 126);
}

/*
 * Reaps every child (init adopts orphans) until the command exits; returns its
 * status (exit code, or 128 + signal), or -1 if a shutdown was requested
 * while it still ran.
 */
static int wait_for(pid_t child, const sigset_t *waitmask)
{
	for (;;) {
		int status;
		pid_t pid;

		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			if (pid != child)
				continue; /* reaped an orphan */
			if (WIFEXITED(status))
				return WEXITSTATUS(status);
			if (WIFSIGNALED(status))
				return 128 + WTERMSIG(status);
		}
		if (pid < 0 && errno == ECHILD)
			return 255; /* cannot happen: the command is our child */
		if (shutdown_request)
			return -1;
		sigsuspend(waitmask); /* returns after any handled signal */
	}
}

/*
 * The last output may still sit in the console's transmit buffer, which
 * drains one UART interrupt at a time: wait for it before reporting or
 * powering off, or the tail of the output is lost.
 */
static void drain_console(void)
{
	if (tcdrain(STDOUT_FILENO) != 0 && errno != ENOTTY)
		msg("tcdrain: %s", strerror(errno));
}

/*
 * What an orderly shutdown does on any Linux machine, minus the grace period
 * between SIGTERM and SIGKILL (programs die as in a power cut, the
 * filesystems do not): kill every other process, wait until they are gone,
 * flush, unmount the disks, and power off or restart.
 */
static void shut_down(int how)
{
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
		/* Reap until no process but init is left. */
	}
	drain_console();
	sync();
	unmount_disks();
	reboot(how);
	msg("reboot: %s", strerror(errno));
	for (;;)
		pause();
}

/*
 * Links every busybox applet named in APPLET_LIST into /bin, unless something of that name is
 * there already. The image carries the list instead of the links: each archive entry costs
 * boot time (the kernel unpacks it in emulated ring 0 on some hosts), a symlink(2) little.
 */
static void link_busybox_applets(void)
{
	char name[64], path[80];
	FILE *list = fopen(APPLET_LIST, "r");

	if (!list)
		return;
	while (fgets(name, sizeof(name), list)) {
		name[strcspn(name, "\n")] = 0;
		if (!name[0] || strchr(name, '/'))
			continue;
		snprintf(path, sizeof(path), "/bin/%s", name);
		if (symlink("busybox", path) != 0 && errno != EEXIST)
			msg("%s: %s", path, strerror(errno));
	}
	fclose(list);
}

int main(void)
{
	struct machine m;
	char **argv;
	char status_text[16];
	sigset_t waitmask, blocked;
	pid_t child;
	int status;

	/* The kernel gives init /dev/console if the archive has it; reopen after devtmpfs. */
	mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	console_stdio();
	mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_fs("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_fs("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "mode=0620,ptmxmode=0666");
	mount_fs("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mkdir("/root", 0700);
	link_busybox_applets();

	/* A template snapshot resumes in here as each restored machine. */
	fetch_identity();
	parse_machine(&m);
	set_hostname(&m);
	setup_network(&m);
	build_environment(&m);
	argv = command_argv();

	setup_signals(&waitmask);
	mount_disks();

	if (write_file(READY_FILE, "1\n") != 0 && errno != ENOENT)
		msg("%s: %s", READY_FILE, strerror(errno));

	child = start_command(argv);
	if (child < 0) {
		msg("fork: %s", strerror(errno));
		status = 255;
	} else {
		status = wait_for(child, &waitmask);
	}

	/* A request that came while the signals were blocked runs its handler now. */
	sigprocmask(SIG_SETMASK, &waitmask, &blocked);
	sigprocmask(SIG_SETMASK, &blocked, NULL);

	/* The command's status, unless a shutdown cut it short. */
	drain_console();
	if (status >= 0) {
		snprintf(status_text, sizeof(status_text), "%d\n", status);
		if (write_file(EXIT_STATUS_FILE, status_text) != 0)
			msg("command exited with status %d", status); /* not under simvm */
	}
	/* `reboot` restarts the machine even when the command ended meanwhile. */
	shut_down(shutdown_request ? shutdown_request : RB_POWER_OFF);
}
