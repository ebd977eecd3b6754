/* keel: train, evaluate and inspect convolutional networks. */
#include "cli.h"
#include "gan.h"
#include "pack.h"
#include "show.h"
#include <string.h>

/* keel_cli_pack takes the command name as argv[0]. */
static int pack_command(int argc, char **argv)
{
    return keel_cli_pack(argc + 1, argv - 1);
}

typedef struct command_entry {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} command_entry;

static const command_entry commands[] = {
    {"train", "train a model (default: LeNet-5 on Fashion-MNIST, on the CPU)", cli_train},
    {"eval", "evaluate saved weights on a test set: loss and top-1 accuracy", cli_eval},
    {"info", "print a model's layers: output shapes, parameters, FLOPs, memory", cli_info},
    {"bench", "time a model's forward and training steps on synthetic data (--per-layer)", cli_bench},
    {"pack", "decode an image folder or list once into packed uint8 shards", pack_command},
    {"gan", "train a DCGAN on Fashion-MNIST: sample grids, checkpoints, Frechet distance", keel_cli_gan},
    {"show", "draw a layer's learned filters or one image's activations as a PNG", keel_cli_show},
    {"devices", "list the devices Keel can run on", cli_devices},
};
enum { n_commands = (int)(sizeof commands / sizeof commands[0]) };

static void print_help(FILE *out)
{
    fprintf(out, "usage: keel COMMAND [flags]\n"
                 "       keel --version\n\n"
                 "Keel trains convolutional networks (LeNet-5, deep MLPs, AlexNet, VGG, GoogLeNet, ResNet)\n"
                 "on the CPU or NVIDIA GPUs.\n\ncommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nmodels:\n");
    for (int i = 0; i < keel_model_count(); i++)
        fprintf(out, "  %-13s %s\n", keel_model_name(i), keel_model_description(i));
    fprintf(out, "\nRun 'keel COMMAND --help' for the flags of a command.\n"
                 "Example: keel train --model cnn-small --epochs 10 --plot run.svg\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_help(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        print_help(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("keel %s\n", keel_version());
        return CLI_OK;
    }
    for (int i = 0; i < n_commands; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "keel: unknown command '%s'\n", name);
    fprintf(stderr, "usage: keel COMMAND [flags]; the commands are:");
    for (int i = 0; i < n_commands; i++)
        fprintf(stderr, " %s", commands[i].name);
    fprintf(stderr, "\nRun 'keel --help' for more.\n");
    return CLI_USAGE;
}
