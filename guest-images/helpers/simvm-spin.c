// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-spin [MS]: busy-waits on clock_gettime(CLOCK_MONOTONIC) (the system
 * call, not the vDSO) until MS milliseconds (default 100) have passed, then
 * prints "done" with the number of clock reads. Under simvm this only ends
 * because repeated reads of an unchanged clock make the guest kernel kick
 * the VMM (the stall rule of docs/guest-abi.md).
 */
#include "tiny.h"

int main(int argc, char **argv)
{
	u64 ms = parse_u64(argc > 1 ? argv[1] : 0, 100);
	u64 reads = spin_ms(ms, monotonic_ns);

	put("done ");
	put_u64(ms);
	put(" ms, ");
	put_u64(reads);
	put(" clock reads\n");
	return 0;
}
