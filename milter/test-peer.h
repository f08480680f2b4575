/*
 * test-peer.h - a scripted fake engine for the clients' fault-injection
 * tests: a child process that accepts one connection and acts out a
 * script (answer, hang, close, babble).  The socket listens before the
 * fork, so there is no race; the child checks what it received itself and
 * tells the result with its exit status.
 */
#ifndef TEST_PEER_H
#define TEST_PEER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct peer {
	pid_t pid;
	char path[108];
	char address[160];
};

/* Runs in the child with the accepted connection; its return value is the
   child's exit status (0: what it received was right). */
typedef int peer_fn(int fd, const void *arg);

static inline void
peer_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Starts a fake engine on a unix socket, or on 127.0.0.1 when INET. */
static inline void
peer_start(struct peer *p, int inet, peer_fn *fn, const void *arg)
{
	static unsigned serial;
	int lfd;

	memset(p, 0, sizeof(*p));
	if (inet) {
		struct sockaddr_in sin = { .sin_family = AF_INET };
		socklen_t len = sizeof(sin);

		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		lfd = socket(AF_INET, SOCK_STREAM, 0);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
		    getsockname(lfd, (struct sockaddr *)&sin, &len) < 0) {
			perror("peer: inet socket");
			exit(99);
		}
		snprintf(p->address, sizeof(p->address), "inet:127.0.0.1:%u",
			 ntohs(sin.sin_port));
	} else {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };

		snprintf(p->path, sizeof(p->path), "/tmp/mm-peer-%ld-%u.sock",
			 (long)getpid(), serial++);
		unlink(p->path);
		strcpy(sun.sun_path, p->path);
		lfd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			perror("peer: unix socket");
			exit(99);
		}
		snprintf(p->address, sizeof(p->address), "unix:%s", p->path);
	}
	if (listen(lfd, 8) < 0) {
		perror("peer: listen");
		exit(99);
	}
	fflush(NULL);
	p->pid = fork();
	if (p->pid < 0) {
		perror("peer: fork");
		exit(99);
	}
	if (p->pid == 0) {
		int fd;

		alarm(20);	/* never outlive a broken test */
		signal(SIGPIPE, SIG_IGN);
		fd = fn ? accept(lfd, NULL, NULL) : -1;
		_exit(fn ? (fd < 0 ? 98 : fn(fd, arg)) : 0);
	}
	close(lfd);
}

/* Stops the peer (killing it unless WAIT) and returns its exit status, or
   -1 when it was killed. */
static inline int
peer_stop(struct peer *p, int wait)
{
	int status = 0;

	if (!wait)
		kill(p->pid, SIGKILL);
	while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
		;
	if (p->path[0])
		unlink(p->path);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Whether TEXT contains PART; says what was missing when not. */
static inline int
test_has(const char *text, const char *part)
{
	if (strstr(text, part) != NULL)
		return 1;
	fprintf(stderr, "  expected \"%s\" in \"%s\"\n", part, text);
	return 0;
}

/* ----------------------------------------------- for the child's scripts */

static inline int
peer_read_exact(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static inline int
peer_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads until the client closes its side; the byte count. */
static inline size_t
peer_drain(int fd)
{
	char buf[65536];
	size_t total = 0;
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
		total += n > 0 ? (size_t)n : 0;
	return total;
}

static inline double
test_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#endif
