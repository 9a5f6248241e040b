/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One hexadecimal digit's value, shared by init (libc) and the helpers
 * (freestanding): it needs nothing from either.
 */
#ifndef SIMVM_HEX_H
#define SIMVM_HEX_H

/* The value of hexadecimal digit c, or -1 if c is not one. */
static inline int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif
