/* SPDX-License-Identifier: MIT */
/*
 * Shared declarations of the `uhmm` command-line tool.
 *
 * Exit status of every subcommand: 0 success, 1 the operation failed (or,
 * for `info`, userfaultfd does not work here), 2 usage error.
 */
#ifndef UHMM_CLI_H
#define UHMM_CLI_H

#include <stddef.h>
#include <stdio.h>

#define CLI_EXIT_OK    0
#define CLI_EXIT_FAIL  1
#define CLI_EXIT_USAGE 2

/* Subcommand entry points: argv[0] is the subcommand's name. */
int cmd_info(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_stat(int argc, char **argv);
int cmd_top(int argc, char **argv);

/* Print the full help of one subcommand (synopsis and description). */
void cli_help(FILE *f, const char *cmd);

/*
 * Report a usage error of subcommand cmd (NULL: the tool itself) on stderr,
 * followed by its synopsis; returns CLI_EXIT_USAGE.
 */
int cli_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Parse a byte count: a decimal number with an optional suffix
 * K/M/G/T (powers of 1024; "KiB", "MB", ... accepted too).
 * Returns 0, or -1 on junk, zero or overflow.
 */
int cli_parse_size(const char *s, size_t *out);

/* Format a byte count as "256 MiB" / "1.5 GiB" / "4096 B" into buf. */
const char *cli_fmt_bytes(char *buf, size_t len, size_t bytes);

#endif /* UHMM_CLI_H */
