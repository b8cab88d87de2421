/* SPDX-License-Identifier: MIT */
/*
 * net.c: synchronous socket helpers (TCP, UDP, Unix sockets). Creating,
 * configuring, binding and listening never block, so they are plain system
 * calls; they return a negative errno instead of setting errno for the
 * caller.
 */
#include <keel/io.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int keel_net_parse_addr(const char *host, uint16_t port,
			struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (!host)
		return -EINVAL;
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

int keel_tcp_socket(int family)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);

	return fd < 0 ? -errno : fd;
}

static int set_int_opt(int fd, int level, int name, int value)
{
	return setsockopt(fd, level, name, &value, sizeof(value)) ? -errno : 0;
}

int keel_tcp_nodelay(int fd)
{
	return set_int_opt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
}

int keel_tcp_listen(const char *host, uint16_t port, int backlog,
		    unsigned flags)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int err = keel_net_parse_addr(host, port, &ss, &len);

	if (err)
		return err;
	int fd = keel_tcp_socket(ss.ss_family);

	if (fd < 0)
		return fd;
	err = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	if (!err && (flags & KEEL_NET_REUSEPORT))
		err = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
	if (!err && bind(fd, (struct sockaddr *)&ss, len))
		err = -errno;
	if (!err && listen(fd, backlog > 0 ? backlog : SOMAXCONN))
		err = -errno;
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

int keel_net_local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return -errno;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -EAFNOSUPPORT;
}

int keel_udp_socket(int family)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);

	return fd < 0 ? -errno : fd;
}

int keel_udp_bind(const char *host, uint16_t port, unsigned flags)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int err = keel_net_parse_addr(host, port, &ss, &len);

	if (err)
		return err;
	if (flags & ~KEEL_NET_REUSEPORT)
		return -EINVAL;
	int fd = keel_udp_socket(ss.ss_family);

	if (fd < 0)
		return fd;
	if (flags & KEEL_NET_REUSEPORT)
		err = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
	if (!err && bind(fd, (struct sockaddr *)&ss, len))
		err = -errno;
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

int keel_unix_addr(const char *path, struct sockaddr_storage *ss,
		   socklen_t *len)
{
	struct sockaddr_un *un = (struct sockaddr_un *)ss;
	size_t n = path ? strlen(path) : 0;

	memset(ss, 0, sizeof(*ss));
	if (!n)
		return -EINVAL;
	/* The path and, for a file, its NUL; an abstract name has none. */
	if (n + (path[0] != '@') > sizeof(un->sun_path))
		return -ENAMETOOLONG;
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, n);
	if (path[0] == '@')
		un->sun_path[0] = '\0';
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
			   (path[0] != '@'));
	return 0;
}

/*
 * A socket file left by a process that is gone: remove it, but only when
 * it is a socket and nothing answers on it, so that a live server (or a
 * file that is not a socket) is never unlinked from under its owner.
 */
static int unlink_stale(const char *path, const struct sockaddr *sa,
			socklen_t len)
{
	struct stat st;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EADDRINUSE;
	int probe =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (probe < 0)
		return -errno;
	int err = connect(probe, sa, len) ? -errno : -EADDRINUSE;

	close(probe);
	if (err != -ECONNREFUSED)
		return err;
	return unlink(path) && errno != ENOENT ? -errno : 0;
}

int keel_unix_listen(const char *path, int backlog, unsigned flags)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int err = keel_unix_addr(path, &ss, &len);

	if (err)
		return err;
	if (flags & ~KEEL_NET_UNLINK_STALE)
		return -EINVAL;
	if ((flags & KEEL_NET_UNLINK_STALE) && path[0] != '@') {
		err = unlink_stale(path, (struct sockaddr *)&ss, len);
		if (err)
			return err;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&ss, len))
		err = -errno;
	if (!err && listen(fd, backlog > 0 ? backlog : SOMAXCONN))
		err = -errno;
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}
