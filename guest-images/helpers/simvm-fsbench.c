// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-fsbench: 4 KiB writes with fsync, for the disk benchmark.
 *
 *   simvm-fsbench FILE COUNT seq|rand [--no-fsync]
 *
 * Writes COUNT blocks of 4 KiB to FILE (created, or truncated to nothing).
 * seq writes them one after the other from offset 0; rand first extends the
 * file to COUNT blocks with one ftruncate(), then writes COUNT blocks at
 * block offsets drawn from a fixed-seed xorshift64 (the same offsets every
 * run, so the guest's work is the same every run; a block may be written
 * more than once). fsync() follows every block, or with --no-fsync one
 * fsync() follows the last block.
 *
 * Prints exactly two lines:
 *
 *   fsbench begin MODE
 *   fsbench end MODE count=N bytes=B vtime_ns=T
 *
 * T is the CLOCK_MONOTONIC time from just after the first line to just
 * before the second (open, truncate, writes, fsyncs and close): under simvm,
 * virtual time. Each block holds its sequence number, so no two blocks are
 * alike.
 *
 * Exit status: 0 on success, 1 on an I/O error (message on stderr), 2 on a
 * usage error. Freestanding like the other helpers (tiny.h, no libc).
 */
#include "tiny.h"

#define SYS_open 2
#define SYS_close 3
#define SYS_pwrite64 18
#define SYS_fsync 74
#define SYS_ftruncate 77

#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

#define BLOCK 4096ul
#define EINTR 4

static char block[BLOCK];

/* "simvm-fsbench: WHAT FILE: errno N" on stderr, then exit 1. */
static void die_errno(const char *what, const char *path, s64 err)
{
	put_fd(2, "simvm-fsbench: ");
	put_fd(2, what);
	put_fd(2, " ");
	put_fd(2, path);
	put_fd(2, ": errno ");
	put_u64_fd(2, (u64)-err);
	put_fd(2, "\n");
	sys_exit(1);
}

static int usage(void)
{
	put_fd(2, "usage: simvm-fsbench FILE COUNT seq|rand [--no-fsync]\n");
	return 2;
}

/* Marsaglia's xorshift64: a fixed seed, so the same offsets every run. */
static u64 xorshift64(u64 *state)
{
	u64 x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* Writes the whole block at offset, retrying short writes and EINTR. */
static void pwrite_full(int fd, const char *buf, u64 len, u64 offset, const char *path)
{
	u64 done = 0;

	while (done < len) {
		s64 n;

		/* pwrite64 takes a fourth argument (r10): the offset. */
		register s64 r10 __asm__("r10") = (s64)(offset + done);
		__asm__ volatile("syscall"
				 : "=a"(n)
				 : "a"(SYS_pwrite64), "D"(fd), "S"(buf + done), "d"(len - done),
				   "r"(r10)
				 : "rcx", "r11", "memory");
		if (n == -EINTR)
			continue;
		if (n < 0)
			die_errno("write", path, n);
		if (n == 0)
			die_errno("write (no progress)", path, -5);
		done += (u64)n;
	}
}

static void fsync_or_die(int fd, const char *path)
{
	s64 r = syscall3(SYS_fsync, fd, 0, 0);

	if (r < 0)
		die_errno("fsync", path, r);
}

static void fill(u64 seq)
{
	/* Every 8 bytes hold the block's sequence number and its position. */
	for (u64 i = 0; i < BLOCK / 8; i++)
		((u64 *)block)[i] = (seq << 16) | i;
}

int main(int argc, char **argv)
{
	const char *path, *mode;
	u64 count, state = 0x9e3779b97f4a7c15ul, start, elapsed;
	int rand, do_fsync = 1;
	s64 fd, r;

	if (argc != 4 && argc != 5)
		return usage();
	path = argv[1];
	count = parse_u64(argv[2], (u64)-1);
	mode = argv[3];
	if (count == (u64)-1 || count == 0 || count > (1ul << 40) / BLOCK)
		return usage();
	if (streq(mode, "seq"))
		rand = 0;
	else if (streq(mode, "rand"))
		rand = 1;
	else
		return usage();
	if (argc == 5) {
		if (!streq(argv[4], "--no-fsync"))
			return usage();
		do_fsync = 0;
	}

	put("fsbench begin ");
	put(mode);
	put("\n");
	start = monotonic_ns();

	fd = syscall3(SYS_open, (s64)path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die_errno("open", path, fd);
	if (rand) {
		r = syscall3(SYS_ftruncate, fd, (s64)(count * BLOCK), 0);
		if (r < 0)
			die_errno("ftruncate", path, r);
	}
	for (u64 i = 0; i < count; i++) {
		u64 at = rand ? xorshift64(&state) % count : i;

		fill(i);
		pwrite_full((int)fd, block, BLOCK, at * BLOCK, path);
		if (do_fsync)
			fsync_or_die((int)fd, path);
	}
	if (!do_fsync)
		fsync_or_die((int)fd, path);
	r = syscall3(SYS_close, fd, 0, 0);
	if (r < 0)
		die_errno("close", path, r);

	elapsed = monotonic_ns() - start;
	put("fsbench end ");
	put(mode);
	put(" count=");
	put_u64(count);
	put(" bytes=");
	put_u64(count * BLOCK);
	put(" vtime_ns=");
	put_u64(elapsed);
	put("\n");
	return 0;
}
