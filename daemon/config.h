/* config — fetchd's JSON configuration file and command-line options.
 *
 * The file holds one JSON object whose keys are the long option names with
 * dashes turned into underscores ("max_connections", "download_dir", ...).
 * Command-line options given after -c override the file.
 */
#ifndef FETCHD_CONFIG_H
#define FETCHD_CONFIG_H

#include <stddef.h>

#include "daemon.h"

/* Reads path into cfg (which holds defaults or earlier settings). Returns 0,
 * or -1 with errmsg saying "path:line: reason". */
int config_load_file(daemon_config_t *cfg, const char *path, char *errmsg, size_t errlen);

/* Sets one option by its key (as in the file) from a string value, as given
 * on the command line. Returns 0, or -1 with errmsg naming the option. */
int config_set(daemon_config_t *cfg, const char *key, const char *value, char *errmsg,
               size_t errlen);

#define CONFIG_HELP      1
#define CONFIG_VERSION   2
#define CONFIG_EX_USAGE  64 /* EX_USAGE */
#define CONFIG_EX_CONFIG 78 /* EX_CONFIG */

/* Applies fetchd's command line to cfg: the -c file first, then every
 * other option over it. *config_path points into argv (or is NULL).
 * Returns 0, CONFIG_HELP or CONFIG_VERSION when asked for those, or
 * CONFIG_EX_USAGE / CONFIG_EX_CONFIG with errmsg saying what is wrong. */
int config_from_args(daemon_config_t *cfg, int argc, char **argv, const char **config_path,
                     char *errmsg, size_t errlen);

#endif
