// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-clock: clock reads through the vDSO, as libc and Go make them.
 *
 *   simvm-clock calls N   N getppid() system calls, then N vDSO
 *                         clock_gettime(CLOCK_MONOTONIC) calls, each run
 *                         between "clock calls begin/end WHAT" lines, so a
 *                         host benchmark can time them by the console.
 *   simvm-clock spin MS   reads the vDSO clock until MS milliseconds have
 *                         passed, then prints "spin done MS ms, R reads".
 *                         It only ends because the vDSO's stall rule kicks
 *                         the VMM (docs/guest-abi.md "The vDSO clock").
 *   simvm-clock now       prints "realtime_ns R monotonic_ns M" (for tests of
 *                         clock faults; date shows whole seconds).
 *
 * calls and spin print "vdso" first with whether the vDSO has the function; without it
 * the system call stands in.
 */
#include "tiny.h"

#define SYS_getppid 110
#define CLOCK_REALTIME 0
#define AT_SYSINFO_EHDR 33
#define PT_LOAD 1
#define PT_DYNAMIC 2
#define DT_NULL 0
#define DT_HASH 4
#define DT_STRTAB 5
#define DT_SYMTAB 6

struct elf_ehdr {
	unsigned char ident[16];
	unsigned short type, machine;
	unsigned int version;
	u64 entry, phoff, shoff;
	unsigned int flags;
	unsigned short ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};

struct elf_phdr {
	unsigned int type, flags;
	u64 offset, vaddr, paddr, filesz, memsz, align;
};

struct elf_dyn {
	s64 tag;
	u64 val;
};

struct elf_sym {
	unsigned int name;
	unsigned char info, other;
	unsigned short shndx;
	u64 value, size;
};

typedef int (*clock_gettime_fn)(int clock, struct timespec *ts);

/* The vDSO's address, from the auxiliary vector after argv and envp. */
static const struct elf_ehdr *vdso_base(char **argv)
{
	char **p = argv;
	u64 *aux;

	while (*p)
		p++;
	for (p++; *p; p++)
		;
	for (aux = (u64 *)(p + 1); aux[0]; aux += 2)
		if (aux[0] == AT_SYSINFO_EHDR)
			return (const struct elf_ehdr *)aux[1];
	return 0;
}

/* Looks `name` up in the vDSO's dynamic symbol table (its DT_HASH gives the count). */
static void *vdso_symbol(const struct elf_ehdr *ehdr, const char *name)
{
	const struct elf_phdr *ph = (const void *)((const char *)ehdr + ehdr->phoff);
	const struct elf_dyn *dyn = 0;
	const unsigned int *hash = 0;
	const struct elf_sym *syms = 0;
	const char *strs = 0;
	u64 load = 0;

	for (int i = 0; i < ehdr->phnum; i++) {
		if (ph[i].type == PT_LOAD)
			load = (u64)ehdr + ph[i].offset - ph[i].vaddr;
		else if (ph[i].type == PT_DYNAMIC)
			dyn = (const void *)((const char *)ehdr + ph[i].offset);
	}
	if (!dyn)
		return 0;
	for (; dyn->tag != DT_NULL; dyn++) {
		if (dyn->tag == DT_HASH)
			hash = (const void *)(dyn->val + load);
		else if (dyn->tag == DT_SYMTAB)
			syms = (const void *)(dyn->val + load);
		else if (dyn->tag == DT_STRTAB)
			strs = (const void *)(dyn->val + load);
	}
	if (!hash || !syms || !strs)
		return 0;
	for (unsigned int i = 0; i < hash[1]; i++)
		if (syms[i].shndx != 0 && streq(strs + syms[i].name, name))
			return (void *)(syms[i].value + load);
	return 0;
}

static clock_gettime_fn vdso_clock_gettime;

static u64 clock_ns(int clock)
{
	struct timespec ts;

	if (vdso_clock_gettime)
		vdso_clock_gettime(clock, &ts);
	else
		syscall3(SYS_clock_gettime, clock, (s64)&ts, 0);
	return (u64)ts.tv_sec * 1000000000ul + (u64)ts.tv_nsec;
}

static u64 now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* Both clocks to the nanosecond, for tests of clock faults (date has whole seconds). */
static void now(void)
{
	put("realtime_ns ");
	put_u64(clock_ns(CLOCK_REALTIME));
	put(" monotonic_ns ");
	put_u64(now_ns());
	put("\n");
}

static void calls(u64 n)
{
	u64 start, sum = 0;

	put("clock calls begin getppid\n");
	for (u64 i = 0; i < n; i++)
		sum += (u64)syscall3(SYS_getppid, 0, 0, 0);
	put("clock calls end getppid\n");
	put("clock calls begin clock_gettime\n");
	start = now_ns();
	for (u64 i = 1; i < n; i++)
		sum += now_ns() & 1;
	put("clock calls end clock_gettime, ");
	put_u64(now_ns() - start);
	put(" ns of virtual time (");
	put_u64(sum & 1);
	put(")\n");
}

static void spin(u64 ms)
{
	u64 reads = spin_ms(ms, now_ns);

	put("spin done ");
	put_u64(ms);
	put(" ms, ");
	put_u64(reads);
	put(" reads\n");
}

int main(int argc, char **argv)
{
	const struct elf_ehdr *vdso = vdso_base(argv);

	if (vdso)
		vdso_clock_gettime = (clock_gettime_fn)vdso_symbol(vdso, "__vdso_clock_gettime");
	if (argc == 2 && streq(argv[1], "now")) {
		now();
		return 0;
	}
	put(vdso_clock_gettime ? "vdso clock_gettime\n" : "vdso none\n");
	if (argc == 3 && streq(argv[1], "calls")) {
		calls(parse_u64(argv[2], 20000));
		return 0;
	}
	if (argc == 3 && streq(argv[1], "spin")) {
		spin(parse_u64(argv[2], 10));
		return 0;
	}
	put("usage: simvm-clock calls N | spin MS | now\n");
	return 2;
}
