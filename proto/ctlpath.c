/* ctlpath — the default control socket path; see ctlpath.h. */
#include "ctlpath.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ctlpath_default(char *buf, size_t len)
{
    const char *rt = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
    int n;

    if (rt && *rt)
        n = snprintf(buf, len, "%.*s/control.sock", (int)strcspn(rt, ":"), rt);
    else if (xdg && *xdg)
        n = snprintf(buf, len, "%s/fetchd/control.sock", xdg);
    else
        n = snprintf(buf, len, "/tmp/fetchd-%u/control.sock", (unsigned)getuid());
    return n > 0 && (size_t)n < len ? 0 : -1;
}
