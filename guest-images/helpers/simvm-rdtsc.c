// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-rdtsc [COUNT]: executes RDTSC COUNT times (default 5) and RDTSCP once
 * in user mode and prints the values, with CLOCK_MONOTONIC for comparison.
 * Under simvm, CR4.TSD makes both instructions trap and the guest kernel
 * returns virtual nanoseconds, so the values are close to monotonic_ns and
 * identical from run to run with the same seed; a host TSC shows up as a
 * large, unrelated, non-reproducible number.
 */
#include "tiny.h"

static inline u64 rdtsc(void)
{
	unsigned int lo, hi;

	__asm__ volatile(".byte 0x0f, 0x31" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline u64 rdtscp(unsigned int *aux)
{
	unsigned int lo, hi;

	__asm__ volatile(".byte 0x0f, 0x01, 0xf9" : "=a"(lo), "=d"(hi), "=c"(*aux));
	return ((u64)hi << 32) | lo;
}

int main(int argc, char **argv)
{
	u64 count = parse_u64(argc > 1 ? argv[1] : 0, 5);
	unsigned int aux = 0;
	u64 v;

	put("monotonic_ns ");
	put_u64(monotonic_ns());
	put("\n");
	for (u64 i = 0; i < count; i++) {
		put("rdtsc ");
		put_u64(rdtsc());
		put("\n");
	}
	v = rdtscp(&aux);
	put("rdtscp ");
	put_u64(v);
	put(" aux ");
	put_u64(aux);
	put("\n");
	put("monotonic_ns ");
	put_u64(monotonic_ns());
	put("\n");
	return 0;
}
