/* ctlpath — where the control socket is by default, shared by fetchd and
 * fetchctl so the two always agree (proto/PROTOCOL.md, "Socket path"). */
#ifndef FETCHD_CTLPATH_H
#define FETCHD_CTLPATH_H

#include <stddef.h>

/* The packaged service's socket (RuntimeDirectory=fetchd). */
#define CTLPATH_SERVICE "/run/fetchd/control.sock"

/* Writes the default path into buf: $RUNTIME_DIRECTORY/control.sock (the
 * first entry if it lists several), else $XDG_RUNTIME_DIR/fetchd/control.sock,
 * else /tmp/fetchd-$UID/control.sock. Returns 0, or -1 when it does not fit. */
int ctlpath_default(char *buf, size_t len);

#endif
