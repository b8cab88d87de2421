/* SPDX-License-Identifier: MIT */
/*
 * keel/net.h: synchronous socket helpers (none of these can block).
 *
 * Creating, binding and configuring a socket never waits, so these are
 * plain calls; the waiting ops (accept, connect, recv, send) are in io.h.
 */
#ifndef KEEL_NET_H
#define KEEL_NET_H

#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* keel_tcp_listen() flags */
#define KEEL_NET_REUSEPORT 0x1u /* SO_REUSEPORT: one listener per loop */

/*
 * Parse a numeric IPv4 or IPv6 address ("127.0.0.1", "::1") and a port into
 * *ss. Returns 0 or -EINVAL.
 */
int keel_net_parse_addr(const char *host, uint16_t port,
			struct sockaddr_storage *ss, socklen_t *len);

/*
 * socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen. Returns the
 * listening fd (close-on-exec) or a negative errno.
 */
int keel_tcp_listen(const char *host, uint16_t port, int backlog,
		    unsigned flags);

/* The port a bound socket got (for port 0), or a negative errno. */
int keel_net_local_port(int fd);

/* A TCP socket for `family` (close-on-exec), or a negative errno. */
int keel_tcp_socket(int family);

/* TCP_NODELAY on; returns 0 or a negative errno. */
int keel_tcp_nodelay(int fd);

#ifdef __cplusplus
}
#endif
#endif
