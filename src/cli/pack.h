/* `keel pack`: decode an image folder or list once into packed shards. */
#ifndef KEEL_CLI_PACK_H
#define KEEL_CLI_PACK_H

/* argv[0] is the command name ("pack"); returns the process exit status:
 * 0 on success, 1 when packing failed, 2 for a usage error. */
int keel_cli_pack(int argc, char **argv);

#endif
