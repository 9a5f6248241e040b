// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-assert: assertions from inside the guest (docs/guest-abi.md, "Assertions").
 *
 *   simvm-assert always NAME COMMAND [ARG]...
 *       Runs COMMAND; exit status 0 means the property held, anything else is a failure of
 *       an `always` property, which fails the run.
 *   simvm-assert sometimes NAME COMMAND [ARG]...
 *       The same, but a failure is fine: what counts is whether the property was ever true.
 *   simvm-assert reachable NAME
 *       This point was reached (expected to be, in some run).
 *   simvm-assert unreachable NAME
 *       This point was reached, which fails the run.
 *   simvm-assert declare KIND NAME
 *       Announces an assertion without evaluating it, so that a `sometimes` never evaluated or
 *       a `reachable` never reached still shows (a soak lists them as never exercised).
 *
 * Each writes one line to /dev/console in a single write(), whatever the program's stdout is:
 *
 *   simvm-assert: always NAME pass|fail
 *   simvm-assert: sometimes NAME pass|fail
 *   simvm-assert: reachable NAME
 *   simvm-assert: unreachable NAME
 *   simvm-assert: declare KIND NAME
 *
 * NAME is 1 to 128 characters, each a letter, a digit or one of _ - . : / @ + = < > % #.
 * COMMAND is found on PATH as a shell would (a name with a / is used as it is); it inherits
 * stdin, stdout, stderr and the environment.
 *
 * Exit status: always and sometimes exit with COMMAND's status (128 + N when signal N killed
 * it, 127 when it was not found, 126 when it could not be run); the others exit 0; a usage
 * error exits 2 and writes nothing to the console. Its own messages go to stderr and start
 * with "simvm-assert error: ", never with the protocol's prefix. Freestanding like the other
 * helpers (tiny.h, no libc).
 */
#include "tiny.h"

#define SYS_open 2
#define SYS_close 3
#define SYS_fork 57
#define SYS_execve 59
#define SYS_wait4 61

#define O_WRONLY 01
#define O_NOCTTY 0400
#define O_APPEND 02000
#define O_CLOEXEC 02000000

#define ENOENT 2
#define EINTR 4
#define ENOTDIR 20

#ifndef CONSOLE
#define CONSOLE "/dev/console"
#endif
#define MAX_NAME 128
#define PREFIX "simvm-assert: "
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static inline s64 syscall4(s64 nr, s64 a, s64 b, s64 c, s64 d)
{
	s64 ret;
	register s64 r10 __asm__("r10") = d;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

static int usage(const char *why)
{
	put_fd(2, "simvm-assert error: ");
	put_fd(2, why);
	put_fd(2, "\nusage: simvm-assert always NAME COMMAND [ARG]...\n"
		  "       simvm-assert sometimes NAME COMMAND [ARG]...\n"
		  "       simvm-assert reachable NAME\n"
		  "       simvm-assert unreachable NAME\n"
		  "       simvm-assert declare always|sometimes|reachable|unreachable NAME\n"
		  "NAME: 1 to 128 letters, digits and _ - . : / @ + = < > % #\n");
	return 2;
}

static int name_char(char c)
{
	const char *extra = "_-.:/@+=<>%#";

	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	for (; *extra; extra++) {
		if (c == *extra)
			return 1;
	}
	return 0;
}

static int valid_name(const char *name)
{
	u64 n = str_len(name);

	if (n == 0 || n > MAX_NAME)
		return 0;
	for (u64 i = 0; i < n; i++) {
		if (!name_char(name[i]))
			return 0;
	}
	return 1;
}

static int valid_kind(const char *kind)
{
	return streq(kind, "always") || streq(kind, "sometimes") || streq(kind, "reachable") ||
	       streq(kind, "unreachable");
}

/* Appends s to buf at *len (the caller sized buf for the longest line). */
static void append(char *buf, u64 *len, const char *s)
{
	while (*s)
		buf[(*len)++] = *s++;
}

/* "simvm-assert: A B C\n" (C may be 0) to /dev/console in one write; stderr if it cannot. */
static void report(const char *a, const char *b, const char *c)
{
	char line[sizeof(PREFIX) + 16 + MAX_NAME + 16];
	u64 len = 0;
	s64 fd;

	append(line, &len, PREFIX);
	append(line, &len, a);
	append(line, &len, " ");
	append(line, &len, b);
	if (c) {
		append(line, &len, " ");
		append(line, &len, c);
	}
	append(line, &len, "\n");
	fd = syscall3(SYS_open, (s64)CONSOLE, O_WRONLY | O_NOCTTY | O_APPEND | O_CLOEXEC, 0);
	if (fd < 0) {
		put_fd(2, "simvm-assert error: cannot open " CONSOLE ", reporting on stderr\n");
		fd = 2;
	}
	syscall3(SYS_write, fd, (s64)line, (s64)len);
	if (fd != 2)
		syscall3(SYS_close, fd, 0, 0);
}

/* The value of NAME in envp, or 0. */
static const char *getenv_in(char **envp, const char *name)
{
	for (; *envp; envp++) {
		const char *e = *envp, *n = name;

		while (*n && *e == *n) {
			e++;
			n++;
		}
		if (*n == '\0' && *e == '=')
			return e + 1;
	}
	return 0;
}

/* In the child: exec argv[0] as a shell would find it; returns the exit status to use. */
static int exec_command(char **argv, char **envp)
{
	const char *path = getenv_in(envp, "PATH");
	const char *cmd = argv[0];
	char full[4096];
	int denied = 0;
	u64 cmd_len = str_len(cmd);

	for (const char *c = cmd; *c; c++) {
		if (*c == '/') {
			s64 err = syscall3(SYS_execve, (s64)cmd, (s64)argv, (s64)envp);

			put_fd(2, "simvm-assert error: cannot run ");
			put_fd(2, cmd);
			put_fd(2, "\n");
			return err == -ENOENT ? 127 : 126;
		}
	}
	if (path == 0)
		path = DEFAULT_PATH;
	while (1) {
		const char *end = path;
		u64 dir_len, len = 0;

		while (*end && *end != ':')
			end++;
		dir_len = (u64)(end - path);
		if (dir_len + 1 + cmd_len + 1 <= sizeof(full)) {
			for (u64 i = 0; i < dir_len; i++)
				full[len++] = path[i];
			if (dir_len == 0)
				full[len++] = '.';
			full[len++] = '/';
			for (u64 i = 0; i <= cmd_len; i++)
				full[len++] = cmd[i];
			s64 err = syscall3(SYS_execve, (s64)full, (s64)argv, (s64)envp);

			/* As a shell: not found everywhere is 127, found but not runnable 126. */
			if (err != -ENOENT && err != -ENOTDIR)
				denied = 1;
		}
		if (*end == '\0')
			break;
		path = end + 1;
	}
	put_fd(2, "simvm-assert error: ");
	put_fd(2, cmd);
	put_fd(2, denied ? ": cannot run\n" : ": not found\n");
	return denied ? 126 : 127;
}

/* Runs argv in a child process and returns its status as a shell reports it. */
static int run(char **argv, char **envp)
{
	s64 pid = syscall3(SYS_fork, 0, 0, 0);
	int status = 0;
	s64 r;

	if (pid < 0) {
		put_fd(2, "simvm-assert error: fork failed\n");
		return 126;
	}
	if (pid == 0)
		sys_exit(exec_command(argv, envp));
	do {
		r = syscall4(SYS_wait4, pid, (s64)&status, 0, 0);
	} while (r == -EINTR);
	if (r < 0) {
		put_fd(2, "simvm-assert error: wait4 failed\n");
		return 126;
	}
	if ((status & 0x7f) == 0)
		return (status >> 8) & 0xff;
	return 128 + (status & 0x7f);
}

int main(int argc, char **argv)
{
	char **envp = argv + argc + 1;
	const char *kind;

	if (argc < 3)
		return usage("too few arguments");
	kind = argv[1];
	if (streq(kind, "declare")) {
		if (argc != 4)
			return usage("declare takes a KIND and a NAME");
		if (!valid_kind(argv[2]))
			return usage("unknown KIND");
		if (!valid_name(argv[3]))
			return usage("bad NAME");
		report("declare", argv[2], argv[3]);
		return 0;
	}
	if (!valid_kind(kind))
		return usage("unknown KIND");
	if (!valid_name(argv[2]))
		return usage("bad NAME");
	if (streq(kind, "reachable") || streq(kind, "unreachable")) {
		if (argc != 3)
			return usage("reachable and unreachable take a NAME only");
		report(kind, argv[2], 0);
		return 0;
	}
	if (argc < 4)
		return usage("always and sometimes need a COMMAND");
	int status = run(argv + 3, envp);
	report(kind, argv[2], status == 0 ? "pass" : "fail");
	return status;
}
