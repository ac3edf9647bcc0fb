/* Loopback only, whatever the input: fuzz targets whose inputs name URLs
 * (control lines, state files) link this file. It replaces connect() and
 * getaddrinfo() for the whole process (libuv calls both through the C
 * library): a TCP connection to anything but the target's own server
 * (127.0.0.1, fuzz_sandbox_port) is refused at once, and a name other than a
 * loopback literal or "localhost" does not resolve. No input can make the
 * target send a packet off this machine, or wait on some local service. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int connect(int fd, const struct sockaddr *sa, socklen_t len);
extern int fuzz_sandbox_port;
int fuzz_sandbox_port = -1;
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res);

static int allowed(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return ntohl(in->sin_addr.s_addr) == INADDR_LOOPBACK &&
               ntohs(in->sin_port) == fuzz_sandbox_port;
    }
    return sa->sa_family == AF_UNIX;
}

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (sa == NULL || !allowed(sa)) {
        errno = ECONNREFUSED;
        return -1;
    }
    return (int)syscall(SYS_connect, fd, sa, len);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    static gai_fn real;
    struct in6_addr a6;
    struct in_addr a4;

    if (node == NULL ||
        !(strcmp(node, "localhost") == 0 ||
          (inet_pton(AF_INET, node, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127) ||
          (inet_pton(AF_INET6, node, &a6) == 1 && memcmp(&a6, &in6addr_loopback, 16) == 0)))
        return EAI_NONAME;
    if (real == NULL)
        real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    return real ? real(node, service, hints, res) : EAI_FAIL;
}
