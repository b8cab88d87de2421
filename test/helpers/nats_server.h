/* SPDX-License-Identifier: MIT */
/*
 * nats_server.h: a loopback nats-server for the NATS tests (test_nats,
 * mt_nats): started on a port, waited for until it listens, killed.
 * Header-only: each test binary links its own copy.
 */
#ifndef KEEL_TEST_NATS_SERVER_H
#define KEEL_TEST_NATS_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Whether something accepts connections on 127.0.0.1:port. */
static inline bool nats_port_open(uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool ok = fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof(a));

	if (fd >= 0)
		close(fd);
	return ok;
}

/*
 * Start `nats-server -a 127.0.0.1 -p port` (its output to /dev/null) and
 * wait until it listens: a bound of 10 s to catch a server that never
 * comes up, not a timing. Returns its pid, or -1 (fork failed, or it did
 * not listen: then it is killed).
 */
static inline pid_t nats_server_start(uint16_t port)
{
	char arg[16];
	pid_t pid;

	snprintf(arg, sizeof(arg), "%u", port);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (!freopen("/dev/null", "w", stdout) ||
		    !freopen("/dev/null", "w", stderr))
			_exit(127);
		execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p",
		       arg, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 1000 && !nats_port_open(port); i++)
		usleep(10000);
	if (nats_port_open(port))
		return pid;
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* SIGKILL and reap a server started above (pid <= 0: nothing). */
static inline void nats_server_kill(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

#endif /* KEEL_TEST_NATS_SERVER_H */
