/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal freestanding runtime for the simvm test helpers: raw x86-64 Linux
 * system calls, no libc. Built with -static -nostdlib -ffreestanding, each
 * helper is a few KiB, which keeps the initramfs (and guest boot time) small.
 */
#ifndef SIMVM_TINY_H
#define SIMVM_TINY_H

typedef unsigned long u64;
typedef long s64;

#define SYS_write 1
#define SYS_clock_gettime 228
#define SYS_exit_group 231
#define CLOCK_MONOTONIC 1

struct timespec {
	s64 tv_sec;
	s64 tv_nsec;
};

static inline s64 syscall3(s64 nr, s64 a, s64 b, s64 c)
{
	s64 ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

/* Up to six arguments; the kernel takes the fourth in r10, not rcx as C would. */
static inline s64 syscall6(s64 nr, s64 a, s64 b, s64 c, s64 d, s64 e, s64 f)
{
	s64 ret;
	register s64 r10 __asm__("r10") = d;
	register s64 r8 __asm__("r8") = e;
	register s64 r9 __asm__("r9") = f;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static inline void sys_exit(int code)
{
	syscall3(SYS_exit_group, code, 0, 0);
	for (;;)
		;
}

static inline u64 monotonic_ns(void)
{
	struct timespec ts;

	syscall3(SYS_clock_gettime, CLOCK_MONOTONIC, (s64)&ts, 0);
	return (u64)ts.tv_sec * 1000000000ul + (u64)ts.tv_nsec;
}

/* Reads the clock with `now` until `ms` milliseconds have passed; returns the number of reads. */
static inline u64 spin_ms(u64 ms, u64 (*now)(void))
{
	u64 start = now(), t = start, reads = 1;

	while (t - start < ms * 1000000ul) {
		t = now();
		reads++;
	}
	return reads;
}

static inline u64 str_len(const char *s)
{
	u64 n = 0;

	while (s[n])
		n++;
	return n;
}

static inline int streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static inline void put_fd(int fd, const char *s)
{
	syscall3(SYS_write, fd, (s64)s, (s64)str_len(s));
}

static inline void put(const char *s)
{
	put_fd(1, s);
}

/* v in decimal, written at the end of buf; returns where the digits start. */
static inline char *format_u64(char buf[21], u64 v)
{
	int i = 20;

	buf[i] = '\0';
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return buf + i;
}

static inline void put_u64_fd(int fd, u64 v)
{
	char buf[21];

	put_fd(fd, format_u64(buf, v));
}

static inline void put_u64(u64 v)
{
	put_u64_fd(1, v);
}

/* Parses a decimal argument; returns def when absent or malformed. */
static inline u64 parse_u64(const char *s, u64 def)
{
	u64 v = 0;

	if (s == 0 || *s == '\0')
		return def;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return def;
		v = v * 10 + (u64)(*s - '0');
	}
	return v;
}

int main(int argc, char **argv);

/* Entry point: the kernel leaves argc at (%rsp), argv after it. */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov (%rsp), %rdi\n"
	"	lea 8(%rsp), %rsi\n"
	"	and $-16, %rsp\n"
	"	call main\n"
	"	mov %eax, %edi\n"
	"	mov $231, %eax\n"
	"	syscall\n"
	"	hlt\n");

#endif
