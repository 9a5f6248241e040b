// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-records: self-checking records for crash tests.
 *
 *   simvm-records write PATH COUNT [--fsync]
 *       Appends COUNT records to PATH (created if missing), numbered on from
 *       the records already there (file size / 32 + 1). With --fsync, fsync()s
 *       after each record and prints "synced N" (N: the number of the last
 *       record now durable); without, prints "wrote N" after each record
 *       whose number is a multiple of 64, and after the last.
 *   simvm-records check PATH
 *       Prints "records intact=I first_bad=B total_bytes=T": I records in
 *       sequence (1, 2, 3, ...) intact from the start of the file, B the
 *       number of the first record slot that holds anything else (a torn,
 *       garbage, zeroed or out-of-sequence record, or a partial one at the
 *       end), -1 when every byte of the file belongs to an intact record.
 *   simvm-records raw DEVICE COUNT
 *       Writes records 1..COUNT to a block device, record N alone in sector
 *       N-1 (512 bytes: the record repeated 16 times), through the page cache
 *       with fdatasync() after each; prints "synced N" after each.
 *   simvm-records rawcheck DEVICE
 *       Like check, over sectors: a sector of zeros ends the records (never
 *       written: first_bad=-1), anything else that is not the next record is
 *       bad. total_bytes is the device size.
 *
 * A record is 32 bytes, "rec NNNNNNNNNN HHHHHHHHHHHHHHHH\n": the decimal
 * record number and a 64-bit check value of it in hex. A record is intact
 * only if it is byte for byte the record its position calls for, so a short,
 * torn, zeroed, garbage or misplaced record is always found.
 *
 * Exit status: 0 on success (check and rawcheck: whatever they found), 1 on
 * an I/O error (message on stderr, with what was done so far on stdout), 2 on
 * a usage error. Freestanding like the other helpers (tiny.h, no libc).
 */
#include "tiny.h"

#define SYS_read 0
#define SYS_open 2
#define SYS_close 3
#define SYS_lseek 8
#define SYS_fsync 74
#define SYS_fdatasync 75

#define O_RDONLY 0
#define O_WRONLY 01
#define O_CREAT 0100
#define O_APPEND 02000
#define SEEK_SET 0
#define SEEK_END 2

#define RECORD 32
#define SECTOR 512
#define MAX_RECORD 9999999999ul /* ten digits */

/* "simvm-records: WHAT PATH: errno N (NAME)" on stderr, then exit 1. */
static void die_errno(const char *what, const char *path, s64 err)
{
	static const struct {
		int no;
		const char *name;
	} names[] = {
		{ 2, "ENOENT" },  { 5, "EIO" },	     { 9, "EBADF" },
		{ 13, "EACCES" }, { 20, "ENOTDIR" }, { 21, "EISDIR" },
		{ 22, "EINVAL" }, { 27, "EFBIG" },   { 28, "ENOSPC" },
		{ 30, "EROFS" },  { 122, "EDQUOT" },
	};
	put_fd(2, "simvm-records: ");
	put_fd(2, what);
	put_fd(2, " ");
	put_fd(2, path);
	put_fd(2, ": errno ");
	put_u64_fd(2, (u64)-err);
	for (unsigned k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		if (names[k].no == -err) {
			put_fd(2, " (");
			put_fd(2, names[k].name);
			put_fd(2, ")");
		}
	}
	put_fd(2, "\n");
	sys_exit(1);
}

static int usage(void)
{
	put_fd(2, "usage: simvm-records write PATH COUNT [--fsync]\n"
		  "       simvm-records check PATH\n"
		  "       simvm-records raw DEVICE COUNT\n"
		  "       simvm-records rawcheck DEVICE\n");
	return 2;
}

/* The check value of record n: splitmix64's finalizer, a bijection on 64 bits. */
static u64 check_value(u64 n)
{
	u64 z = n + 0x9e3779b97f4a7c15ul;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ul;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebul;
	return z ^ (z >> 31);
}

/* Writes record n, exactly RECORD bytes, into buf. */
static void format_record(char *buf, u64 n)
{
	static const char hex[] = "0123456789abcdef";
	u64 c = check_value(n);
	int i;

	buf[0] = 'r';
	buf[1] = 'e';
	buf[2] = 'c';
	buf[3] = ' ';
	for (i = 13; i >= 4; i--) {
		buf[i] = (char)('0' + n % 10);
		n /= 10;
	}
	buf[14] = ' ';
	for (i = 30; i >= 15; i--) {
		buf[i] = hex[c & 15];
		c >>= 4;
	}
	buf[31] = '\n';
}

static int record_is(const char *buf, u64 n)
{
	char want[RECORD];

	format_record(want, n);
	for (int i = 0; i < RECORD; i++)
		if (buf[i] != want[i])
			return 0;
	return 1;
}

static void put_progress(const char *what, u64 n)
{
	put(what);
	put_u64(n);
	put("\n");
}

/* Reads until len bytes or end of file; returns the count or dies. */
static u64 read_full(int fd, char *buf, u64 len, const char *path)
{
	u64 got = 0;

	while (got < len) {
		s64 n = syscall3(SYS_read, fd, (s64)(buf + got), (s64)(len - got));

		if (n == -4) /* EINTR */
			continue;
		if (n < 0)
			die_errno("read", path, n);
		if (n == 0)
			break;
		got += (u64)n;
	}
	return got;
}

static void write_full(int fd, const char *buf, u64 len, const char *path)
{
	u64 done = 0;

	while (done < len) {
		s64 n = syscall3(SYS_write, fd, (s64)(buf + done), (s64)(len - done));

		if (n == -4) /* EINTR */
			continue;
		if (n < 0)
			die_errno("write", path, n);
		done += (u64)n;
	}
}

static int open_or_die(const char *path, s64 flags, const char *what)
{
	s64 fd = syscall3(SYS_open, (s64)path, flags, 0644);

	if (fd < 0)
		die_errno(what, path, fd);
	return (int)fd;
}

static void sync_or_die(int nr, int fd, const char *path)
{
	s64 r = syscall3(nr, fd, 0, 0);

	if (r < 0)
		die_errno(nr == SYS_fsync ? "fsync" : "fdatasync", path, r);
}

static int cmd_write(const char *path, u64 count, int do_fsync)
{
	int fd = open_or_die(path, O_WRONLY | O_APPEND | O_CREAT, "open");
	s64 size = syscall3(SYS_lseek, fd, 0, SEEK_END);
	char rec[RECORD];
	u64 first, n;

	if (size < 0)
		die_errno("lseek", path, size);
	first = (u64)size / RECORD + 1;
	if (count > MAX_RECORD || first + count - 1 > MAX_RECORD) {
		put_fd(2, "simvm-records: record numbers would exceed ten digits\n");
		return 2;
	}
	for (n = first; n < first + count; n++) {
		format_record(rec, n);
		write_full(fd, rec, RECORD, path);
		if (do_fsync) {
			sync_or_die(SYS_fsync, fd, path);
			put_progress("synced ", n);
		} else if (n % 64 == 0 || n == first + count - 1) {
			put_progress("wrote ", n);
		}
	}
	syscall3(SYS_close, fd, 0, 0);
	return 0;
}

static void report(u64 intact, s64 first_bad, u64 total)
{
	put("records intact=");
	put_u64(intact);
	put(" first_bad=");
	if (first_bad < 0)
		put("-1");
	else
		put_u64((u64)first_bad);
	put(" total_bytes=");
	put_u64(total);
	put("\n");
}

static int cmd_check(const char *path)
{
	static char buf[4096];
	int fd = open_or_die(path, O_RDONLY, "open");
	u64 intact = 0, total = 0, got;
	s64 first_bad = -1;

	while ((got = read_full(fd, buf, sizeof(buf), path)) > 0) {
		for (u64 off = 0; off < got && first_bad < 0; off += RECORD) {
			if (got - off < RECORD || !record_is(buf + off, intact + 1))
				first_bad = (s64)intact + 1;
			else
				intact++;
		}
		total += got;
	}
	syscall3(SYS_close, fd, 0, 0);
	report(intact, first_bad, total);
	return 0;
}

static int cmd_raw(const char *dev, u64 count)
{
	static char sector[SECTOR];
	int fd = open_or_die(dev, O_WRONLY, "open");

	if (count > MAX_RECORD) {
		put_fd(2, "simvm-records: record numbers would exceed ten digits\n");
		return 2;
	}
	for (u64 n = 1; n <= count; n++) {
		s64 r;

		for (int i = 0; i < SECTOR; i += RECORD)
			format_record(sector + i, n);
		r = syscall3(SYS_lseek, fd, (s64)((n - 1) * SECTOR), SEEK_SET);
		if (r < 0)
			die_errno("lseek", dev, r);
		write_full(fd, sector, SECTOR, dev);
		sync_or_die(SYS_fdatasync, fd, dev);
		put_progress("synced ", n);
	}
	syscall3(SYS_close, fd, 0, 0);
	return 0;
}

static int cmd_rawcheck(const char *dev)
{
	static char sector[SECTOR];
	int fd = open_or_die(dev, O_RDONLY, "open");
	s64 size = syscall3(SYS_lseek, fd, 0, SEEK_END);
	u64 intact = 0;
	s64 first_bad = -1;

	if (size < 0)
		die_errno("lseek", dev, size);
	if (syscall3(SYS_lseek, fd, 0, SEEK_SET) < 0)
		die_errno("lseek", dev, -22);
	for (;;) {
		u64 got = read_full(fd, sector, SECTOR, dev);
		int zero = 1, ok = got == SECTOR;

		if (got == 0)
			break; /* end of the device */
		for (u64 i = 0; i < got; i++)
			zero &= sector[i] == 0;
		if (zero && got == SECTOR)
			break; /* never written: the records end here */
		for (int i = 0; ok && i < SECTOR; i += RECORD)
			ok = record_is(sector + i, intact + 1);
		if (!ok) {
			first_bad = (s64)intact + 1;
			break;
		}
		intact++;
	}
	syscall3(SYS_close, fd, 0, 0);
	report(intact, first_bad, (u64)size);
	return 0;
}

int main(int argc, char **argv)
{
	u64 count;

	if (argc < 3)
		return usage();
	if (streq(argv[1], "check") && argc == 3)
		return cmd_check(argv[2]);
	if (streq(argv[1], "rawcheck") && argc == 3)
		return cmd_rawcheck(argv[2]);
	if (argc < 4)
		return usage();
	count = parse_u64(argv[3], (u64)-1);
	if (count == (u64)-1)
		return usage();
	if (streq(argv[1], "write") && argc == 4)
		return cmd_write(argv[2], count, 0);
	if (streq(argv[1], "write") && argc == 5 && streq(argv[4], "--fsync"))
		return cmd_write(argv[2], count, 1);
	if (streq(argv[1], "raw") && argc == 4)
		return cmd_raw(argv[2], count);
	return usage();
}
