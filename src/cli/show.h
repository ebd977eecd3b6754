/* keel show: pictures of a network's learned filters and of the feature
 * maps one image produces at a layer. */
#ifndef KEEL_CLI_SHOW_H
#define KEEL_CLI_SHOW_H

int keel_cli_show(int argc, char **argv);

#endif
