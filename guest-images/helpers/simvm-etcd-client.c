// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-etcd-client: a register workload against etcd 3.4's JSON gateway,
 * recording a history for `simvm check`.
 *
 *   simvm-etcd-client [--endpoints IP:PORT,...] [--clients N] [--keys N]
 *       [--duration S] [--timeout S] [--think MS] [--serializable]
 *       [--history PATH] [--final-reads]
 *
 * Waits until some endpoint answers a read of k1 ("workload: cluster up"),
 * then forks N workers. Worker i talks to endpoint i % endpoints only, over
 * one kept-alive HTTP/1.1 connection, and until --duration has passed does
 * reads (50%), writes (25%) and compare-and-sets (25%) of keys k1..kN, with
 * a random pause of up to --think ms before each. Every request, connect
 * included, is bounded by --timeout. Values are unique integers: process *
 * 1000000 + a counter. A cas expects the last value its worker saw for the
 * key (null: the key is missing).
 *
 * Each operation is an invoke line and then an ok, fail or info line (JSON,
 * the shape checker/src/history.rs reads). ok needs HTTP 200 with etcd's
 * "header" object in the body. A read that gets anything else fails (it
 * changed nothing). A write or cas fails if nothing was sent (connect
 * failed) and ends info (unknown) otherwise; a cas answered 200 without
 * "succeeded":true fails, as etcd evaluated the compare and wrote nothing.
 * After an info, the worker goes on under a fresh process id (id + N).
 *
 * Workers send their lines through one pipe (one write each, so atomic); the
 * parent appends them to --history (default stdout): a file is truncated, a
 * block device written from its start (simvm reads it up to the first NUL),
 * and either is fdatasync()ed at least every 500 ms. --final-reads
 * then reads every key once more (process 1000000 + key number), retrying
 * each endpoint in turn for up to 10 s. Last, one line: "workload: done: N
 * operations (ok A, fail B, info C) in S.SSS s".
 *
 * Randomness comes from getrandom(2), which simvm seeds, and time is
 * CLOCK_MONOTONIC: virtual time under simvm, so a run is a function of the
 * seed. Exit status: 0 after the workload (whatever etcd did), 1 if the
 * history cannot be written or a worker died, 2 on a usage error.
 * Freestanding like the other helpers (tiny.h, no libc).
 */
#include "tiny.h"
#include "hex.h"

#define SYS_read 0
#define SYS_open 2
#define SYS_close 3
#define SYS_pipe 22
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_connect 42
#define SYS_sendto 44
#define SYS_setsockopt 54
#define SYS_getsockopt 55
#define SYS_fork 57
#define SYS_wait4 61
#define SYS_fdatasync 75
#define SYS_ppoll 271
#define SYS_getrandom 318

#define EINTR 4
#define EAGAIN 11
#define EINVAL 22
#define EINPROGRESS 115
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000
#define AF_INET 2
#define SOCK_STREAM 1
#define SOCK_NONBLOCK 04000
#define SOCK_CLOEXEC 02000000
#define SOL_SOCKET 1
#define SO_ERROR 4
#define IPPROTO_TCP 6
#define TCP_NODELAY 1
#define MSG_NOSIGNAL 0x4000
#define POLLIN 1
#define POLLOUT 4

#define NS_PER_MS 1000000ul
#define NS_PER_S 1000000000ul
#define FOREVER ((u64)-1)
#define MAX_ENDPOINTS 16
#define MAX_CLIENTS 100
#define MAX_KEYS 1000
#define MAX_SECONDS 1000000
#define VALUES_PER_PROCESS 1000000 /* value = process * this + counter */
#define FINAL_PROCESS 1000000	   /* final reads: this + key number */
#define FINAL_READ_NS (10 * NS_PER_S)
#define RETRY_NS (100 * NS_PER_MS)
#define SYNC_NS (500 * NS_PER_MS)
#define TEXT_MAX 1024	 /* a history line, a request */
#define REPLY_MAX 16384 /* a reply: etcd's are a few hundred bytes */
#define NO_VALUE (-1)	 /* a missing key: values are never negative */

struct sockaddr_in {
	unsigned short family;
	unsigned short port; /* big-endian, as is addr */
	unsigned int addr;
	unsigned char zero[8];
};

struct pollfd {
	int fd;
	short events, revents;
};

struct endpoint {
	struct sockaddr_in sa;
	char name[24]; /* "10.0.0.1:2379": the Host header */
};

static struct {
	struct endpoint eps[MAX_ENDPOINTS];
	u64 n_eps, clients, keys, think_ms, duration_ns, timeout_ns;
	int serializable, final_reads;
	const char *history; /* 0: stdout */
} cfg = { .clients = 5, .keys = 3, .think_ms = 10, .duration_ns = 15 * NS_PER_S,
	  .timeout_ns = 1500 * NS_PER_MS };

enum { READ, WRITE, CAS };
enum { INVOKE, OK, FAIL, INFO };
enum { UNSENT, LOST, REPLIED };	   /* what became of a request */
enum { NEED_MORE, BAD, COMPLETE }; /* what the bytes received so far are */

static const char *const f_names[] = { "read", "write", "cas" };
static const char *const type_fields[] = { "\"type\":\"invoke\"", "\"type\":\"ok\"",
					   "\"type\":\"fail\"", "\"type\":\"info\"" };

struct op {
	u64 process, key; /* key: 1..keys, for "k1".. */
	int f, serializable;
	s64 value;    /* written, the new value of a cas, or what an ok read read */
	s64 expected; /* a cas's */
};

struct reply {
	int status, close;
	u64 len;
	char body[REPLY_MAX];
};

/* Text built up piece by piece; it cannot overflow (a line is far shorter). */
struct text {
	u64 n;
	char s[TEXT_MAX];
};

static void add(struct text *t, const char *s)
{
	while (*s && t->n < TEXT_MAX)
		t->s[t->n++] = *s++;
}

static void add_u64(struct text *t, u64 v)
{
	char digits[21];

	add(t, format_u64(digits, v));
}

/* An integer, or null for a missing key. */
static void add_value(struct text *t, s64 v)
{
	if (v == NO_VALUE)
		add(t, "null");
	else
		add_u64(t, (u64)v);
}

static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void add_base64(struct text *t, const struct text *raw)
{
	const unsigned char *s = (const unsigned char *)raw->s;

	for (u64 i = 0; i < raw->n; i += 3) {
		u64 rest = raw->n - i;
		unsigned w = (unsigned)s[i] << 16 | (rest > 1 ? (unsigned)s[i + 1] << 8 : 0) |
			     (rest > 2 ? s[i + 2] : 0);
		char quad[5] = { abc[w >> 18], abc[w >> 12 & 63], rest > 1 ? abc[w >> 6 & 63] : '=',
				 rest > 2 ? abc[w & 63] : '=', '\0' };

		add(t, quad);
	}
}

/* name:"<base64 of prefix and the decimal v>": a key ("k", 2) or a value ("", 1000003). */
static void add_b64_field(struct text *t, const char *name, const char *prefix, u64 v)
{
	struct text raw;

	raw.n = 0;
	add(&raw, prefix);
	add_u64(&raw, v);
	add(t, name);
	add(t, ":\"");
	add_base64(t, &raw);
	add(t, "\"");
}

static int b64_digit(char c)
{
	for (int i = 0; i < 64; i++)
		if (abc[i] == c)
			return i;
	return -1;
}

/* Decodes base64 (padding optional) into out; returns the byte count, -1 if bad or too long. */
static s64 base64_decode(const char *s, u64 len, char *out, u64 max)
{
	u64 bits = 0, nbits = 0, n = 0;

	while (len > 0 && s[len - 1] == '=')
		len--;
	for (u64 i = 0; i < len; i++) {
		int d = b64_digit(s[i]);

		if (d < 0)
			return -1;
		bits = bits << 6 | (u64)d;
		nbits += 6;
		if (nbits >= 8) {
			nbits -= 8;
			if (n == max)
				return -1;
			out[n++] = (char)(bits >> nbits);
		}
	}
	return (s64)n;
}

/* Consumes decimal digits at *s; 0 if there are none or the number exceeds max. */
static int parse_digits(const char **s, u64 max, u64 *v)
{
	const char *p = *s;

	*v = 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		*v = *v * 10 + (u64)(*p - '0');
		if (*v > max)
			return 0;
	}
	if (p == *s)
		return 0;
	*s = p;
	return 1;
}

/* The first occurrence of needle in hay[0..n), or 0. */
static const char *find(const char *hay, u64 n, const char *needle)
{
	u64 m = str_len(needle);

	for (u64 i = 0; i + m <= n; i++) {
		u64 j = 0;

		while (j < m && hay[i + j] == needle[j])
			j++;
		if (j == m)
			return hay + i;
	}
	return 0;
}

/*
 * JSON, as far as etcd's gateway replies go: the strings it sends are base64
 * or decimal, never holding a quote or backslash, and the objects we look
 * into (the header, a kv) hold no others, so a field is found by its name
 * and ends at the next quote, and an object ends at the next brace.
 */

/* The object or array that "name": opens in s[0..n), up to its first close; 0 if none. */
static const char *json_scope(const char *s, u64 n, const char *name, char close, u64 *len)
{
	const char *start = find(s, n, name), *p;

	if (!start)
		return 0;
	for (p = start; p < s + n; p++) {
		if (*p == close) {
			*len = (u64)(p - start);
			return start;
		}
	}
	return 0;
}

/* The string value of "name":" in s[0..n); 0 if none. */
static const char *json_string(const char *s, u64 n, const char *name, u64 *len)
{
	const char *v = find(s, n, name), *p;

	if (!v)
		return 0;
	v += str_len(name);
	for (p = v; p < s + n; p++) {
		if (*p == '"') {
			*len = (u64)(p - v);
			return v;
		}
	}
	return 0;
}

/* The reply's header revision into *revision (0 if absent); 0 if there is no header. */
static int reply_header(const struct reply *r, u64 *revision)
{
	u64 len, vlen;
	const char *h = json_scope(r->body, r->len, "\"header\":{", '}', &len);
	const char *v = h ? json_string(h, len, "\"revision\":\"", &vlen) : 0;

	*revision = 0;
	if (v && vlen > 0 && vlen < 20)
		parse_digits(&v, FOREVER / 10, revision);
	return h != 0;
}

/* A range reply's value into *value (NO_VALUE: no kvs, the key is missing); 0 if unparsable. */
static int range_value(const struct reply *r, s64 *value)
{
	u64 len, vlen, n;
	const char *kvs = json_scope(r->body, r->len, "\"kvs\":[", ']', &len);
	const char *v = kvs ? json_string(kvs, len, "\"value\":\"", &vlen) : 0;
	char digits[19];
	s64 got;

	*value = NO_VALUE;
	if (!kvs)
		return 1;
	if (!v || (got = base64_decode(v, vlen, digits, sizeof(digits) - 1)) <= 0)
		return 0;
	digits[got] = '\0';
	v = digits;
	if (!parse_digits(&v, FOREVER / 10, &n) || *v)
		return 0;
	*value = (s64)n;
	return 1;
}

/* Waits for events on fd until the deadline; returns the events seen, 0 on timeout. */
static int wait_fd(int fd, short events, u64 deadline)
{
	struct pollfd p = { fd, events, 0 };
	u64 now = monotonic_ns(), left = deadline > now ? deadline - now : 0;
	struct timespec ts = { (s64)(left / NS_PER_S), (s64)(left % NS_PER_S) };
	s64 r;

	do {
		r = syscall6(SYS_ppoll, (s64)&p, 1, deadline == FOREVER ? 0 : (s64)&ts, 0, 8, 0);
	} while (r == -EINTR);
	return r > 0 ? p.revents : 0;
}

static void sleep_ns(u64 ns)
{
	struct timespec ts = { (s64)(ns / NS_PER_S), (s64)(ns % NS_PER_S) };

	syscall3(SYS_nanosleep, (s64)&ts, 0, 0);
}

/* A connection to one endpoint, kept alive from request to request. */
struct conn {
	const struct endpoint *ep;
	int fd; /* -1: none */
};

static void hang_up(struct conn *c)
{
	if (c->fd >= 0)
		syscall3(SYS_close, c->fd, 0, 0);
	c->fd = -1;
}

static int dial(struct conn *c, u64 deadline)
{
	s64 fd = syscall3(SYS_socket, AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int err = 0, one = 1;
	unsigned len = sizeof(err);
	s64 r;

	if (fd < 0)
		return 0;
	r = syscall3(SYS_connect, fd, (s64)&c->ep->sa, sizeof(c->ep->sa));
	if (r == -EINPROGRESS) {
		r = -1; /* unless it completes in time, and without an error */
		if (wait_fd((int)fd, POLLOUT, deadline) &&
		    syscall6(SYS_getsockopt, fd, SOL_SOCKET, SO_ERROR, (s64)&err, (s64)&len, 0) == 0)
			r = -err;
	}
	if (r < 0) {
		syscall3(SYS_close, fd, 0, 0);
		return 0;
	}
	/* A request is one write, but no reason to let Nagle hold it either. */
	syscall6(SYS_setsockopt, fd, IPPROTO_TCP, TCP_NODELAY, (s64)&one, sizeof(one), 0);
	c->fd = (int)fd;
	return 1;
}

/* Sends buf until done, an error or the deadline; returns the bytes sent. */
static u64 send_all(int fd, const char *buf, u64 len, u64 deadline)
{
	u64 sent = 0;

	while (sent < len) {
		/* MSG_NOSIGNAL: a reset connection is an error here, not a SIGPIPE. */
		s64 n = syscall6(SYS_sendto, fd, (s64)(buf + sent), (s64)(len - sent), MSG_NOSIGNAL,
				 0, 0);

		if (n > 0)
			sent += (u64)n;
		else if (n != -EAGAIN || !wait_fd(fd, POLLOUT, deadline))
			break;
	}
	return sent;
}

/* If s starts with prefix (lower case), ignoring case, what follows it; else 0. */
static const char *skip_prefix(const char *s, const char *prefix)
{
	for (; *prefix; prefix++, s++) {
		char c = *s >= 'A' && *s <= 'Z' ? (char)(*s + 32) : *s;

		if (c != *prefix)
			return 0;
	}
	return s;
}

/* If the header line is name's (lower case), its value; else 0. */
static const char *header_value(const char *line, const char *name)
{
	line = skip_prefix(line, name);
	if (!line || *line++ != ':')
		return 0;
	while (*line == ' ' || *line == '\t')
		line++;
	return line;
}

static int copy_body(struct reply *r, const char *p, u64 n)
{
	if (r->len + n > REPLY_MAX)
		return 0;
	for (u64 i = 0; i < n; i++)
		r->body[r->len++] = p[i];
	return 1;
}

/* Joins the chunks of a chunked body, p[0..n), into r->body. */
static int dechunk(const char *p, u64 n, struct reply *r)
{
	const char *end = p + n, *eol;

	for (;;) {
		u64 size = 0;

		if (!(eol = find(p, (u64)(end - p), "\r\n")))
			return NEED_MORE;
		if (hex_digit(*p) < 0)
			return BAD;
		for (; hex_digit(*p) >= 0; p++) {
			size = size * 16 + (u64)hex_digit(*p);
			if (size > REPLY_MAX)
				return BAD;
		}
		p = eol + 2; /* past any chunk extension */
		if (size == 0)
			break;
		if ((u64)(end - p) < size + 2)
			return NEED_MORE;
		if (p[size] != '\r' || p[size + 1] != '\n' || !copy_body(r, p, size))
			return BAD;
		p += size + 2;
	}
	/* Trailer fields, if any, up to an empty line. */
	while ((eol = find(p, (u64)(end - p), "\r\n")) != p) {
		if (!eol)
			return NEED_MORE;
		p = eol + 2;
	}
	r->close |= p + 2 < end; /* bytes after the reply: start afresh */
	return COMPLETE;
}

/* Parses the n bytes received so far (eof: and no more will come) as one HTTP reply. */
static int parse_reply(const char *in, u64 n, int eof, struct reply *r)
{
	const char *end = find(in, n, "\r\n\r\n"), *body, *line, *v;
	u64 length = FOREVER, rest, status;
	int chunked = 0;

	if (!end)
		return NEED_MORE;
	body = end + 4;
	rest = (u64)(in + n - body);
	v = in + 9; /* "HTTP/1.1 200 OK" */
	if (!skip_prefix(in, "http/1.") || in[8] != ' ' || !parse_digits(&v, 999, &status) ||
	    v != in + 12)
		return BAD;
	r->status = (int)status;
	r->close = in[7] == '0'; /* HTTP/1.0 closes unless told otherwise */
	r->len = 0;
	/* Each header line ends in CRLF before body, so no scan below runs past it. */
	line = find(in, n, "\r\n") + 2;
	for (; line < body; line = find(line, (u64)(body - line), "\r\n") + 2) {
		if ((v = header_value(line, "content-length")) && !parse_digits(&v, REPLY_MAX, &length))
			return BAD;
		if ((v = header_value(line, "transfer-encoding")))
			chunked = skip_prefix(v, "chunked") != 0;
		if ((v = header_value(line, "connection")))
			r->close = skip_prefix(v, "close") != 0;
	}
	if (chunked)
		return dechunk(body, rest, r);
	if (length == FOREVER) { /* the body runs to the end of the connection */
		r->close = 1;
		length = rest;
		if (!eof)
			return NEED_MORE;
	}
	if (rest < length)
		return NEED_MORE;
	r->close |= rest > length;
	return copy_body(r, body, length) ? COMPLETE : BAD;
}

/* Receives the reply to the request just sent; 0 on error, timeout or a bad reply. */
static int receive(struct conn *c, struct reply *r, u64 deadline)
{
	static char in[REPLY_MAX];
	u64 n = 0;
	int eof = 0;

	for (;;) {
		int state = parse_reply(in, n, eof, r);
		s64 got;

		if (state != NEED_MORE)
			return state == COMPLETE;
		if (eof || n == sizeof(in) || !wait_fd(c->fd, POLLIN, deadline))
			return 0;
		got = syscall3(SYS_read, c->fd, (s64)(in + n), (s64)(sizeof(in) - n));
		if (got == -EAGAIN || got == -EINTR)
			continue;
		if (got < 0)
			return 0;
		eof = got == 0;
		n += (u64)got;
	}
}

/* POSTs body to path within --timeout; returns UNSENT, LOST or REPLIED (then *r is valid). */
static int http_post(struct conn *c, const char *path, const struct text *body, struct reply *r)
{
	u64 deadline = monotonic_ns() + cfg.timeout_ns, sent;
	struct text req;

	/* A kept-alive connection the server closed (or wrote on) meanwhile is of no use. */
	if (c->fd >= 0 && wait_fd(c->fd, POLLIN, 0))
		hang_up(c);
	if (c->fd < 0 && !dial(c, deadline))
		return UNSENT;
	req.n = 0;
	add(&req, "POST ");
	add(&req, path);
	add(&req, " HTTP/1.1\r\nHost: ");
	add(&req, c->ep->name);
	add(&req, "\r\nContent-Type: application/json\r\nContent-Length: ");
	add_u64(&req, body->n);
	add(&req, "\r\n\r\n");
	for (u64 i = 0; i < body->n && req.n < TEXT_MAX; i++)
		req.s[req.n++] = body->s[i];
	sent = send_all(c->fd, req.s, req.n, deadline);
	if (sent < req.n) {
		hang_up(c);
		return sent ? LOST : UNSENT;
	}
	if (!receive(c, r, deadline)) {
		hang_up(c);
		return LOST;
	}
	if (r->close)
		hang_up(c);
	return REPLIED;
}

/* The request for op: its JSON body into *body; returns the gateway path. */
static const char *request(const struct op *op, struct text *body)
{
	body->n = 0;
	switch (op->f) {
	case READ:
		add_b64_field(body, "{\"key\"", "k", op->key);
		add(body, op->serializable ? ",\"serializable\":true}" : "}");
		return "/v3/kv/range";
	case WRITE:
		add_b64_field(body, "{\"key\"", "k", op->key);
		add_b64_field(body, ",\"value\"", "", (u64)op->value);
		add(body, "}");
		return "/v3/kv/put";
	default:
		add_b64_field(body, "{\"compare\":[{\"key\"", "k", op->key);
		add(body, ",\"result\":\"EQUAL\"");
		if (op->expected == NO_VALUE)
			add(body, ",\"target\":\"CREATE\",\"create_revision\":\"0\"");
		else
			add_b64_field(body, ",\"target\":\"VALUE\",\"value\"", "", (u64)op->expected);
		add_b64_field(body, "}],\"success\":[{\"request_put\":{\"key\"", "k", op->key);
		add_b64_field(body, ",\"value\"", "", (u64)op->value);
		add(body, "}}]}");
		return "/v3/kv/txn";
	}
}

/* The outcome of op from what became of its request; an ok read's value goes into op. */
static int judge(struct op *op, int sent, const struct reply *r, u64 *revision)
{
	int valid = sent == REPLIED && r->status == 200 && reply_header(r, revision);

	if (op->f == READ)
		return valid && range_value(r, &op->value) ? OK : FAIL;
	if (valid)
		return op->f == WRITE || find(r->body, r->len, "\"succeeded\":true") ? OK : FAIL;
	return sent == UNSENT ? FAIL : INFO;
}

/* Worker: its end of the pipe to the parent; the parent: -1, it writes the history itself. */
static int event_pipe = -1;
static void history_append(const char *s, u64 n);

/* One history line for op, stamped now. */
static void record(const struct op *op, int type, u64 revision)
{
	struct text t;

	t.n = 0;
	add(&t, "{\"process\":");
	add_u64(&t, op->process);
	add(&t, ",");
	add(&t, type_fields[type]);
	add(&t, ",\"f\":\"");
	add(&t, f_names[op->f]);
	add(&t, "\",\"key\":\"k");
	add_u64(&t, op->key);
	add(&t, "\"");
	if (op->f == CAS) {
		add(&t, ",\"value\":[");
		add_value(&t, op->expected);
		add(&t, ",");
		add_value(&t, op->value);
		add(&t, "]");
	} else if (op->f == WRITE || type == OK) {
		add(&t, ",\"value\":");
		add_value(&t, op->value);
	}
	add(&t, ",\"time_ns\":");
	add_u64(&t, monotonic_ns());
	if (revision) {
		add(&t, ",\"revision\":");
		add_u64(&t, revision);
	}
	if (op->serializable)
		add(&t, ",\"serializable\":true");
	add(&t, "}\n");
	if (event_pipe < 0)
		history_append(t.s, t.n);
	else if (syscall3(SYS_write, event_pipe, (s64)t.s, (s64)t.n) != (s64)t.n)
		sys_exit(1); /* the parent is gone */
}

/* Runs op over c, recording its invocation and outcome; returns the outcome. */
static int run_op(struct conn *c, struct op *op)
{
	static struct reply reply;
	struct text body;
	const char *path = request(op, &body);
	u64 revision = 0;
	int outcome;

	record(op, INVOKE, 0);
	outcome = judge(op, http_post(c, path, &body, &reply), &reply, &revision);
	record(op, outcome, outcome == OK ? revision : 0);
	return outcome;
}

/* splitmix64's finalizer, and splitmix64 itself. */
static u64 mix64(u64 z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ul;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebul;
	return z ^ (z >> 31);
}

static u64 next_random(u64 *state)
{
	return mix64(*state += 0x9e3779b97f4a7c15ul);
}

static void worker(u64 index, u64 seed, u64 end_ns)
{
	static s64 last[MAX_KEYS + 1]; /* the last value seen of each key */
	struct conn c = { &cfg.eps[index % cfg.n_eps], -1 };
	u64 process = index, counter = 0, rng = mix64(seed ^ index);

	for (u64 k = 1; k <= cfg.keys; k++)
		last[k] = NO_VALUE;
	for (;;) {
		struct op op = { .process = process, .key = 1 + next_random(&rng) % cfg.keys,
				 .f = READ, .serializable = cfg.serializable };
		u64 dice = next_random(&rng) % 4;

		sleep_ns(next_random(&rng) % (cfg.think_ms + 1) * NS_PER_MS);
		/* Out of unique values or of process ids (never, in a test's length): stop. */
		if (monotonic_ns() >= end_ns || counter + 1 >= VALUES_PER_PROCESS ||
		    process >= FINAL_PROCESS)
			break;
		if (dice >= 2) {
			op.f = dice == 2 ? WRITE : CAS;
			op.serializable = 0;
			op.value = (s64)(process * VALUES_PER_PROCESS + ++counter);
			op.expected = last[op.key];
		}
		switch (run_op(&c, &op)) {
		case OK:
			last[op.key] = op.value;
			break;
		case INFO: /* it may still take effect: this process can invoke no more */
			process += cfg.clients;
			break;
		}
	}
	hang_up(&c);
}

/* Polls every endpoint in turn until one answers a linearizable read. */
static void wait_for_cluster(void)
{
	static struct reply reply;
	struct op probe = { .key = 1, .f = READ };
	struct text body;
	const char *path = request(&probe, &body);

	for (u64 i = 0;; i++) {
		struct conn c = { &cfg.eps[i % cfg.n_eps], -1 };
		int sent = http_post(&c, path, &body, &reply);

		hang_up(&c);
		if (sent == REPLIED && reply.status == 200)
			return;
		sleep_ns(RETRY_NS);
	}
}

/* One linearizable read of every key, by the parent, each retried for up to 10 s. */
static void final_reads(void)
{
	struct conn c = { &cfg.eps[0], -1 };
	u64 e = 0;

	for (u64 k = 1; k <= cfg.keys; k++) {
		struct op op = { .process = FINAL_PROCESS + k, .key = k, .f = READ };
		u64 give_up = monotonic_ns() + FINAL_READ_NS;

		while (run_op(&c, &op) != OK && monotonic_ns() < give_up) {
			hang_up(&c);
			c.ep = &cfg.eps[++e % cfg.n_eps];
			sleep_ns(RETRY_NS);
		}
	}
	hang_up(&c);
}

static void die(const char *what, s64 err)
{
	put_fd(2, "simvm-etcd-client: ");
	put_fd(2, what);
	if (err) {
		put_fd(2, ": errno ");
		put_u64_fd(2, (u64)-err);
	}
	put_fd(2, "\n");
	sys_exit(1);
}

static struct {
	int fd;
	u64 synced_ns; /* when last made durable */
	int dirty;     /* written since: only a file or device is ever dirty */
	u64 count[4];  /* lines by type */
} history = { 1, 0, 0, { 0 } };

static void history_open(void)
{
	s64 fd;

	if (!cfg.history)
		return;
	/* O_TRUNC empties a regular file; Linux ignores it for a device, written from 0. */
	fd = syscall3(SYS_open, (s64)cfg.history, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("cannot open the history", fd);
	history.fd = (int)fd;
}

static void history_sync(void)
{
	s64 r = history.dirty ? syscall3(SYS_fdatasync, history.fd, 0, 0) : 0;

	if (r < 0 && r != -EINVAL) /* EINVAL: a pipe or terminal, nothing to sync */
		die("cannot sync the history", r);
	history.dirty = 0;
	history.synced_ns = monotonic_ns();
}

/* Appends whole lines to the history, counting them by type. */
static void history_append(const char *s, u64 n)
{
	for (u64 done = 0; done < n;) {
		s64 w = syscall3(SYS_write, history.fd, (s64)(s + done), (s64)(n - done));

		if (w <= 0 && w != -EINTR)
			die("cannot write the history", w);
		if (w > 0)
			done += (u64)w;
	}
	for (const char *line = s, *nl; line < s + n; line = nl + 1) {
		nl = find(line, (u64)(s + n - line), "\n");
		for (int type = INVOKE; type <= INFO; type++)
			history.count[type] += find(line, (u64)(nl - line), type_fields[type]) != 0;
	}
	history.dirty = cfg.history != 0;
	if (monotonic_ns() - history.synced_ns >= SYNC_NS)
		history_sync();
}

/* Copies the workers' lines to the history until they have all closed the pipe. */
static void collect(int fd)
{
	static char buf[65536];
	u64 have = 0;

	for (;;) {
		u64 whole;
		s64 n;

		if (!wait_fd(fd, POLLIN, history.dirty ? history.synced_ns + SYNC_NS : FOREVER)) {
			history_sync();
			continue;
		}
		n = syscall3(SYS_read, fd, (s64)(buf + have), (s64)(sizeof(buf) - have));
		if (n == -EINTR)
			continue;
		if (n <= 0)
			break;
		have += (u64)n;
		/* Lines arrive whole (one write under PIPE_BUF each), but keep any tail anyway. */
		for (whole = have; whole > 0 && buf[whole - 1] != '\n'; whole--)
			;
		history_append(buf, whole);
		for (u64 i = whole; i < have; i++)
			buf[i - whole] = buf[i];
		have -= whole;
	}
}

/* Forks the workers and collects their lines; returns 1 if all of them exited cleanly. */
static int run_workers(u64 seed, u64 end_ns)
{
	int fds[2], status, clean = 1;

	if (syscall3(SYS_pipe, (s64)fds, 0, 0) < 0)
		die("pipe failed", 0);
	for (u64 i = 0; i < cfg.clients; i++) {
		s64 pid = syscall3(SYS_fork, 0, 0, 0);

		if (pid < 0)
			die("fork failed", pid);
		if (pid == 0) {
			syscall3(SYS_close, fds[0], 0, 0);
			event_pipe = fds[1];
			worker(i, seed, end_ns);
			sys_exit(0);
		}
	}
	syscall3(SYS_close, fds[1], 0, 0);
	collect(fds[0]);
	syscall3(SYS_close, fds[0], 0, 0);
	for (u64 i = 0; i < cfg.clients; i++) {
		if (syscall6(SYS_wait4, -1, (s64)&status, 0, 0, 0, 0) < 0)
			break;
		clean &= status == 0;
	}
	return clean;
}

/* Endpoints "a.b.c.d:port,..." into cfg.eps. */
static int parse_endpoints(const char *s)
{
	for (cfg.n_eps = 0; cfg.n_eps < MAX_ENDPOINTS; s++) {
		struct endpoint *ep = &cfg.eps[cfg.n_eps++];
		const char *start = s;
		u64 part, addr = 0;

		for (int i = 0; i < 4; i++) {
			if (!parse_digits(&s, 255, &part) || *s++ != (i < 3 ? '.' : ':'))
				return 0;
			addr |= part << (8 * i);
		}
		if (!parse_digits(&s, 65535, &part) || part == 0 || (*s && *s != ',') ||
		    s - start >= (s64)sizeof(ep->name))
			return 0;
		ep->sa.family = AF_INET;
		ep->sa.port = (unsigned short)(part >> 8 | (part & 0xff) << 8);
		ep->sa.addr = (unsigned)addr;
		for (int i = 0; i < s - start; i++)
			ep->name[i] = start[i];
		ep->name[s - start] = '\0';
		if (!*s)
			return 1;
	}
	return 0;
}

static int parse_count(const char *s, u64 min, u64 max, u64 *v)
{
	return parse_digits(&s, max, v) && !*s && *v >= min;
}

/* Seconds with up to nine decimals ("2.5") into nanoseconds. */
static int parse_seconds(const char *s, u64 *ns)
{
	u64 secs, scale = NS_PER_S;

	if (!parse_digits(&s, MAX_SECONDS, &secs))
		return 0;
	*ns = secs * NS_PER_S;
	if (*s == '.' && s[1]) {
		for (s++; *s >= '0' && *s <= '9' && scale > 1; s++) {
			scale /= 10;
			*ns += (u64)(*s - '0') * scale;
		}
	}
	return !*s;
}

/* Sets an option that takes a value: 1 done, 0 if the value is bad or missing, -1 unknown. */
static int set_option(const char *opt, const char *arg)
{
	if (streq(opt, "--endpoints"))
		return arg && parse_endpoints(arg);
	if (streq(opt, "--clients"))
		return arg && parse_count(arg, 1, MAX_CLIENTS, &cfg.clients);
	if (streq(opt, "--keys"))
		return arg && parse_count(arg, 1, MAX_KEYS, &cfg.keys);
	if (streq(opt, "--think"))
		return arg && parse_count(arg, 0, 60000, &cfg.think_ms);
	if (streq(opt, "--duration"))
		return arg && parse_seconds(arg, &cfg.duration_ns);
	if (streq(opt, "--timeout"))
		return arg && parse_seconds(arg, &cfg.timeout_ns) && cfg.timeout_ns > 0;
	if (streq(opt, "--history")) {
		cfg.history = arg;
		return arg && *arg;
	}
	return -1;
}

static const char usage_text[] =
	"usage: simvm-etcd-client [--endpoints IP:PORT,...] [--clients N] [--keys N]\n"
	"           [--duration S] [--timeout S] [--think MS] [--serializable]\n"
	"           [--history PATH] [--final-reads]\n"
	"  --endpoints  up to 16 IPv4 address:port (10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379)\n"
	"  --clients    worker processes, 1 to 100 (5)\n"
	"  --keys       keys k1..kN, N from 1 to 1000 (3)\n"
	"  --duration   seconds of workload, decimals allowed (15)\n"
	"  --timeout    seconds per request, more than 0 (1.5)\n"
	"  --think      most milliseconds of pause before each operation, up to 60000 (10)\n"
	"  --history    file or block device for the history (stdout)\n"
	"  --serializable  reads may be answered, stale, by any member alone\n"
	"  --final-reads   at the end, one linearizable read of every key\n";

static int usage_error(const char *what, const char *opt, const char *arg)
{
	put_fd(2, "simvm-etcd-client: ");
	put_fd(2, what);
	put_fd(2, opt);
	if (arg) {
		put_fd(2, ": ");
		put_fd(2, arg);
	}
	put_fd(2, "\n");
	put_fd(2, usage_text);
	return 2;
}

static int parse_args(int argc, char **argv)
{
	parse_endpoints("10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379");
	for (int i = 1; i < argc; i++) {
		const char *opt = argv[i], *arg = i + 1 < argc ? argv[i + 1] : 0;
		int r;

		if (streq(opt, "--serializable")) {
			cfg.serializable = 1;
		} else if (streq(opt, "--final-reads")) {
			cfg.final_reads = 1;
		} else if (streq(opt, "--help")) {
			put(usage_text);
			sys_exit(0);
		} else if ((r = set_option(opt, arg)) < 0) {
			return usage_error("unknown option ", opt, 0);
		} else if (r == 0) {
			return usage_error(arg ? "bad value for " : "missing value for ", opt, arg);
		} else {
			i++;
		}
	}
	return 0;
}

static void summary(u64 elapsed_ns)
{
	u64 ms = elapsed_ns / NS_PER_MS;
	char millis[] = { (char)('0' + ms / 100 % 10), (char)('0' + ms / 10 % 10),
			  (char)('0' + ms % 10), '\0' };
	struct text t;

	t.n = 0;
	add(&t, "workload: done: ");
	add_u64(&t, history.count[OK] + history.count[FAIL] + history.count[INFO]);
	add(&t, " operations (ok ");
	add_u64(&t, history.count[OK]);
	add(&t, ", fail ");
	add_u64(&t, history.count[FAIL]);
	add(&t, ", info ");
	add_u64(&t, history.count[INFO]);
	add(&t, ") in ");
	add_u64(&t, ms / 1000);
	add(&t, ".");
	add(&t, millis);
	add(&t, " s\n");
	syscall3(SYS_write, 1, (s64)t.s, (s64)t.n);
}

int main(int argc, char **argv)
{
	u64 seed, start;
	int clean;

	if (parse_args(argc, argv))
		return 2;
	history_open();
	/* Blocks until the kernel's generator is seeded: under simvm, from the run's seed. */
	if (syscall3(SYS_getrandom, (s64)&seed, sizeof(seed), 0) != sizeof(seed))
		die("getrandom failed", 0);
	wait_for_cluster();
	put("workload: cluster up\n");
	start = monotonic_ns();
	history.synced_ns = start;
	clean = run_workers(seed, start + cfg.duration_ns);
	if (cfg.final_reads)
		final_reads();
	history.dirty = cfg.history != 0;
	history_sync();
	summary(monotonic_ns() - start);
	if (!clean)
		die("a worker died", 0);
	return 0;
}
