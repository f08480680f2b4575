/*
 * mm-engine.c - addresses, connections and deadline-bound I/O for the
 * clients of clamd and spamd.
 *
 * Sockets are non-blocking from the start; every wait is a poll() with the
 * time left until the caller's deadline, so a peer that accepts and then
 * says nothing costs at most the configured timeout.  Sends use
 * MSG_NOSIGNAL: a peer that closes while we write yields EPIPE, not a
 * SIGPIPE that would kill the milter.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mm-engine.h"

struct address {
	int is_unix;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char host[256];
	char port[8];
};

static const char *
parse_port(const char *text, size_t len, struct address *a)
{
	unsigned long port = 0;

	if (len == 0 || len > 5)
		return "expected a port number from 1 to 65535";
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return "expected a port number from 1 to 65535";
		port = port * 10 + (unsigned long)(text[i] - '0');
	}
	if (port == 0 || port > 65535)
		return "expected a port number from 1 to 65535";
	snprintf(a->port, sizeof(a->port), "%lu", port);
	return NULL;
}

static const char *
parse_host(const char *text, size_t len, struct address *a)
{
	if (len == 0)
		return "the host is missing";
	if (len >= sizeof(a->host))
		return "the host name is too long";
	for (size_t i = 0; i < len; i++)
		if (text[i] <= ' ' || text[i] > '~' || text[i] == '[' || text[i] == ']')
			return "the host contains a character that cannot be in a host name";
	memcpy(a->host, text, len);
	a->host[len] = '\0';
	return NULL;
}

/* "HOST:PORT", "[V6]:PORT" or libmilter's "PORT@HOST". */
static const char *
parse_inet(const char *s, struct address *a)
{
	const char *at = strchr(s, '@'), *colon, *close;
	const char *why;

	if (at != NULL) {
		if ((why = parse_port(s, (size_t)(at - s), a)) != NULL)
			return why;
		return parse_host(at + 1, strlen(at + 1), a);
	}
	if (s[0] == '[') {
		if ((close = strchr(s, ']')) == NULL || close[1] != ':')
			return "expected inet:[IPv6 address]:port";
		if ((why = parse_host(s + 1, (size_t)(close - s - 1), a)) != NULL)
			return why;
		return parse_port(close + 2, strlen(close + 2), a);
	}
	colon = strchr(s, ':');
	if (colon == NULL)
		return "expected inet:host:port";
	if (strchr(colon + 1, ':') != NULL)
		return "write an IPv6 address in brackets: inet:[::1]:port";
	if ((why = parse_host(s, (size_t)(colon - s), a)) != NULL)
		return why;
	return parse_port(colon + 1, strlen(colon + 1), a);
}

static const char *
parse_address(const char *text, struct address *a)
{
	memset(a, 0, sizeof(*a));
	if (text == NULL)
		return "no address";
	if (strncmp(text, "unix:", 5) == 0) {
		a->is_unix = 1;
		if (text[5] != '/')
			return "expected unix:/absolute/path";
		if (strlen(text + 5) >= sizeof(a->path))
			return "the socket path is too long";
		strcpy(a->path, text + 5);
		return NULL;
	}
	if (strncmp(text, "inet:", 5) == 0)
		return parse_inet(text + 5, a);
	if (strncmp(text, "inet6:", 6) == 0)
		return parse_inet(text + 6, a);
	return "expected unix:/path or inet:host:port";
}

const char *
mm_engine_address_error(const char *address)
{
	struct address a;

	return parse_address(address, &a);
}

/* ------------------------------------------------------------ helpers */

int64_t
mm_engine_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
mm_engine_why(char why[MM_ENGINE_TEXT_SIZE], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, MM_ENGINE_TEXT_SIZE, fmt, ap);
	va_end(ap);
}

void
mm_engine_quote(char dst[MM_ENGINE_TEXT_SIZE], const char *src, size_t len)
{
	size_t n = 0, max = MM_ENGINE_TEXT_SIZE - 1;

	if (len > max)
		max -= 3;
	for (size_t i = 0; i < len && n < max; i++) {
		unsigned char c = (unsigned char)src[i];

		dst[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (len > n)
		while (n < MM_ENGINE_TEXT_SIZE - 1)
			dst[n++] = '.';
	dst[n] = '\0';
}

/* Waits for EVENTS on FD until DEADLINE: 0, or -1 with errno. */
static int
wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };

	for (;;) {
		int64_t left = deadline - mm_engine_now_ms();
		int r;

		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

/* -------------------------------------------------------------- connect */

static int
connect_unix(const struct address *a, int64_t deadline, char why[MM_ENGINE_TEXT_SIZE])
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		mm_engine_why(why, "socket: %s", strerror(errno));
		return -1;
	}
	strcpy(sun.sun_path, a->path);
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
			return fd;
		if (errno == EINTR)
			continue;
		/* a full listen queue: Linux says EAGAIN, and poll() cannot
		   tell when it has room; try again shortly */
		if (errno == EAGAIN && mm_engine_now_ms() + 5 < deadline) {
			poll(NULL, 0, 5);
			continue;
		}
		if (errno == EAGAIN)
			errno = ETIMEDOUT;
		mm_engine_why(why, "connect to %s: %s", a->path, strerror(errno));
		close(fd);
		return -1;
	}
}

static int
connect_one(const struct addrinfo *ai, int64_t deadline)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			ai->ai_protocol);
	int err = 0, one = 1;
	socklen_t len = sizeof(err);

	if (fd < 0)
		return -1;
	/* small requests and the INSTREAM terminator go out at once */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return fd;
	if (errno != EINPROGRESS && errno != EINTR)
		goto fail;
	if (wait_fd(fd, POLLOUT, deadline) < 0)
		goto fail;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		goto fail;
	if (err == 0)
		return fd;
	errno = err;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

static int
connect_inet(const struct address *a, int64_t deadline, char why[MM_ENGINE_TEXT_SIZE])
{
	struct addrinfo hints = {
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST,
	}, *res = NULL;
	int r = getaddrinfo(a->host, a->port, &hints, &res), fd = -1;

	if (r == EAI_NONAME) {
		hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
		r = getaddrinfo(a->host, a->port, &hints, &res);
	}
	if (r != 0) {
		mm_engine_why(why, "resolve %s: %s", a->host, gai_strerror(r));
		return -1;
	}
	errno = ECONNREFUSED;
	for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next)
		fd = connect_one(ai, deadline);
	if (fd < 0)
		mm_engine_why(why, "connect to %s:%s: %s", a->host, a->port,
			      strerror(errno));
	freeaddrinfo(res);
	return fd;
}

int
mm_engine_connect(const char *address, int64_t deadline, char why[MM_ENGINE_TEXT_SIZE])
{
	struct address a;
	const char *bad = parse_address(address, &a);

	if (bad != NULL) {
		mm_engine_why(why, "address %s: %s", address ? address : "(none)", bad);
		return -1;
	}
	return a.is_unix ? connect_unix(&a, deadline, why)
			 : connect_inet(&a, deadline, why);
}

/* --------------------------------------------------------------- I/O */

int
mm_engine_send(int fd, struct iovec *iov, int iovcnt, int64_t deadline)
{
	while (iovcnt > 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (wait_fd(fd, POLLOUT, deadline) < 0)
				return -1;
			continue;
		}
		/* drop what went out */
		while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

ssize_t
mm_engine_recv(int fd, void *buf, size_t len, int64_t deadline)
{
	for (;;) {
		ssize_t n = recv(fd, buf, len, 0);

		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (wait_fd(fd, POLLIN, deadline) < 0)
			return -1;
	}
}
