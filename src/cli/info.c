/* keel info: a model's layers as a table (name, op, output shape,
 * parameters, forward FLOPs, activation memory) with totals, the way
 * torchsummary prints a PyTorch module. */
#include "cli.h"
#include <stdlib.h>
#include <string.h>

static const char description[] =
    "Builds a model of the zoo and prints one row per layer: its output shape (batch first),\n"
    "trainable parameters, forward FLOPs (a multiply-add counts 2) and the bytes of its output,\n"
    "then the totals. Nothing is allocated or run.";

static void shape_text(const keel_layer_info *l, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int d = 0; d < l->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? "x" : "", (long long)l->shape[d]);
}

static int name_width(const keel_graph *g, int layers)
{
    int width = 5;
    for (int i = 0; i < layers; i++) {
        keel_layer_info l;
        if (keel_graph_layer_info(g, i, &l) == KEEL_OK && (int)strlen(l.name) > width)
            width = (int)strlen(l.name);
    }
    return width > 48 ? 48 : width;
}

static void print_table(const keel_graph *g, const char *model, const keel_model_io *io, int64_t batch)
{
    int layers = keel_graph_layer_count(g);
    int width = name_width(g, layers);
    bool groups = false;
    for (int i = 0; i < layers; i++) {
        keel_layer_info l;
        if (keel_graph_layer_info(g, i, &l) == KEEL_OK && l.group != 0)
            groups = true;
    }
    int64_t in_shape[KEEL_MAX_DIMS], out_shape[KEEL_MAX_DIMS];
    keel_node_shape(io->images, in_shape);
    keel_node_shape(io->logits, out_shape);
    printf("%s: input %lldx%lldx%lld, %lld classes, batch %lld\n\n", model, (long long)in_shape[1],
           (long long)in_shape[2], (long long)in_shape[3], (long long)out_shape[1], (long long)batch);
    int rule = width + 2 + 24 + 20 + 14 + 14 + 14 + (groups ? 6 : 0);
    printf("%-*s  %-22s  %-18s  %12s  %12s  %12s%s\n", width, "Layer", "Op", "Output shape", "Params", "FLOPs",
           "Activations", groups ? "  group" : "");
    for (int i = 0; i < rule; i++) putchar('-');
    putchar('\n');
    double flops = 0;
    int64_t activations = 0;
    for (int i = 0; i < layers; i++) {
        keel_layer_info l;
        if (keel_graph_layer_info(g, i, &l) != KEEL_OK)
            continue;
        char shape[128], params[32], fl[32], act[32];
        shape_text(&l, shape, sizeof shape);
        printf("%-*.*s  %-22s  %-18s  %12s  %12s  %12s", width, width, l.name, l.op, shape,
               cli_thousands(l.params, params, sizeof params), cli_scaled(l.flops, false, "", fl, sizeof fl),
               cli_scaled((double)l.activation_bytes, true, "B", act, sizeof act));
        if (groups)
            printf("  %5d", l.group);
        putchar('\n');
        flops += l.flops;
        activations += l.activation_bytes;
    }
    for (int i = 0; i < rule; i++) putchar('=');
    putchar('\n');
    int64_t params = keel_graph_param_count(g);
    char a[64], b[64], c[64];
    printf("Total params:      %s\n", cli_thousands(params, a, sizeof a));
    printf("Trainable params:  %s\n", cli_thousands(params, a, sizeof a));
    printf("Parameter memory:  %s (float32)\n", cli_scaled(4.0 * (double)params, true, "B", a, sizeof a));
    printf("Forward FLOPs:     %s per batch of %lld, %s per image (%s multiply-adds)\n",
           cli_scaled(flops, false, "FLOPs", a, sizeof a), (long long)batch,
           cli_scaled(flops / (double)batch, false, "FLOPs", b, sizeof b),
           cli_scaled(flops / 2.0 / (double)batch, false, "", c, sizeof c));
    printf("Activations:       %s per batch of %lld (sum of the layer outputs)\n",
           cli_scaled((double)activations, true, "B", a, sizeof a), (long long)batch);
}

int cli_info(int argc, char **argv)
{
    const char *model = "lenet5", *input = NULL, *hidden = NULL;
    int64_t batch = 1;
    int classes = 0;
    float dropout = 0;
    bool training = false;
    cli_flag flags[] = {
        {"model", CLI_STRING, &model, "NAME", "the network (default lenet5; `keel --help` lists them)"},
        {"batch", CLI_INT64, &batch, "N", "batch size the shapes, FLOPs and memory are given for (default 1)"},
        {"input", CLI_STRING, &input, "CxHxW", "input size (default: the model's own, e.g. 1x28x28 for lenet5)"},
        {"classes", CLI_INT, &classes, "N", "number of classes (default: the model's own)"},
        {"hidden", CLI_STRING, &hidden, "W,W,...", "dmlp: hidden layer widths"},
        {"dropout", CLI_FLOAT, &dropout, "P", "dropout probability of models that have it (negative: none)"},
        {"training", CLI_SWITCH, &training, NULL, "include training-only layers (GoogLeNet's auxiliary classifiers)"},
    };
    cli_command cmd = {"info", NULL, "keel info --model NAME [--batch N] [--input CxHxW] [--classes N]",
                       description, flags, (int)(sizeof flags / sizeof flags[0])};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    keel_model_opts mo = {.batch = batch, .classes = classes, .dropout = dropout, .training = training};
    if (batch < 1)
        return cli_usage_error(&cmd, "--batch must be at least 1, got %lld", (long long)batch);
    if (classes < 0)
        return cli_usage_error(&cmd, "--classes must be at least 1, got %d", classes);
    if (input && cli_parse_input_shape(input, &mo.in_channels, &mo.height, &mo.width) != 0)
        return cli_usage_error(&cmd, "--input expects CxHxW such as 3x224x224, got '%s'", input);
    int widths[64];
    if (hidden) {
        mo.n_hidden = cli_parse_widths(hidden, widths, 64);
        if (mo.n_hidden < 1)
            return cli_usage_error(&cmd, "--hidden expects widths like 1000,500, got '%s'", hidden);
        mo.hidden = widths;
    }
    keel_graph *g = keel_graph_new();
    if (!g)
        return cli_error("out of memory");
    keel_model_io io;
    keel_status st = keel_model_build(g, model, &mo, &io);
    if (st == KEEL_OK)
        print_table(g, model, &io, batch);
    keel_graph_free(g);
    return st == KEEL_OK ? CLI_OK : cli_keel_error();
}
