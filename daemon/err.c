/* err — the error table; see err.h. */
#include "err.h"

#include <string.h>
#include <uv.h>

static const char *const names[] = {
#define X(e, name, msg) name,
    ERR_MAP(X)
#undef X
};

static const char *const messages[] = {
#define X(e, name, msg) msg,
    ERR_MAP(X)
#undef X
};

static int in_table(int err)
{
    return err > ERR__BASE && err < ERR__END;
}

const char *err_name(int err)
{
    if (err == 0)
        return "ok";
    return in_table(err) ? names[err - ERR__BASE - 1] : "unknown";
}

const char *err_str(int err)
{
    if (err == 0)
        return "success";
    if (in_table(err))
        return messages[err - ERR__BASE - 1];
    return err < 0 && err > -4096 ? uv_strerror(err) : "unknown error";
}

int err_from_name(const char *name)
{
    for (int e = ERR__BASE + 1; e < ERR__END; e++)
        if (strcmp(names[e - ERR__BASE - 1], name) == 0)
            return e;
    return 0;
}

int err_from_uv(int uverr)
{
    if (uverr >= 0 || in_table(uverr))
        return uverr;
    switch (uverr) {
    case UV_ENOMEM:
    case UV_ENOBUFS:
        return ERR_NO_MEMORY;
    case UV_ECONNREFUSED:
    case UV_EHOSTUNREACH:
    case UV_ENETUNREACH:
    case UV_EADDRNOTAVAIL:
    case UV_EAFNOSUPPORT:
        return ERR_CONNECT_REFUSED;
    case UV_ETIMEDOUT:
        return ERR_CONNECT_TIMEOUT;
    case UV_EMFILE:
    case UV_ENFILE:
        return ERR_NO_FDS;
    case UV_EOF:
    case UV_ECONNRESET:
    case UV_ECONNABORTED:
    case UV_EPIPE:
        return ERR_TRUNCATED;
    case UV_ECANCELED:
        return ERR_CANCELLED;
    case UV_EAI_ADDRFAMILY:
    case UV_EAI_AGAIN:
    case UV_EAI_BADFLAGS:
    case UV_EAI_FAIL:
    case UV_EAI_FAMILY:
    case UV_EAI_MEMORY:
    case UV_EAI_NODATA:
    case UV_EAI_NONAME:
    case UV_EAI_SERVICE:
    case UV_EAI_SOCKTYPE:
        return ERR_DNS;
    default:
        return ERR_IO;
    }
}
