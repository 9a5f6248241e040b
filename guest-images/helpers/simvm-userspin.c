// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-userspin [SECONDS]: computes in user mode, without any system call or
 * clock read, for about SECONDS (default 2) of real time on the development
 * machine (a fixed amount of work: ITERS_PER_SECOND steps of a multiply-add chain
 * per "second"),
 * then prints "done". A guest doing this makes no VM exit, so simvm's virtual
 * time cannot advance meanwhile; it exercises the VMM's watchdog.
 */
#include "tiny.h"

#define ITERS_PER_SECOND 700000000ul

int main(int argc, char **argv)
{
	u64 seconds = parse_u64(argc > 1 ? argv[1] : 0, 2);
	u64 iterations = seconds * ITERS_PER_SECOND, acc = 0;

	/* A dependent multiply-add chain: about 4 cycles per iteration. */
	for (u64 i = 0; i < iterations; i++) {
		acc = acc * 6364136223846793005ul + i;
		__asm__ volatile("" : "+r"(acc));
	}
	put("done ");
	put_u64(seconds);
	put(" s of user work, checksum ");
	put_u64(acc & 0xffff);
	put("\n");
	return 0;
}
