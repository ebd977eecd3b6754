/* keel devices: what Keel can run on here. */
#include "cli.h"
#include <string.h>

int cli_devices(int argc, char **argv)
{
    cli_command cmd = {"devices", NULL, "keel devices",
                       "Lists the devices Keel can run on: the CPU always, and each CUDA GPU when this\n"
                       "build has the CUDA backend and a GPU is present. Pass a name to --device.",
                       NULL, 0};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    keel_context *ctx = NULL;
    if (keel_context_create(&ctx, NULL) != KEEL_OK)
        return cli_keel_error();
    int n = keel_device_count(ctx), gpus = 0;
    for (int i = 0; i < n; i++) {
        keel_device_info info;
        if (keel_device_get(ctx, i, &info) != KEEL_OK) {
            keel_context_destroy(ctx);
            return cli_keel_error();
        }
        char total[32], free_mem[32];
        printf("%-8s %s", info.name, info.description);
        if (info.total_memory > 0)
            printf(", %s memory, %s free", cli_scaled((double)info.total_memory, true, "B", total, sizeof total),
                   cli_scaled((double)info.free_memory, true, "B", free_mem, sizeof free_mem));
        if (info.compute_major > 0)
            printf(", compute capability %d.%d", info.compute_major, info.compute_minor);
        putchar('\n');
        gpus += strncmp(info.name, "cuda", 4) == 0;
    }
    if (gpus == 0) {
        if (strstr(keel_version(), "cuda"))
            printf("No GPU: this keel has the CUDA backend, but no CUDA device was found; training runs on the CPU.\n");
        else
            printf("No GPU: this keel was built without the CUDA backend (meson -Dcuda=enabled); training runs "
                   "on the CPU.\n");
    }
    keel_context_destroy(ctx);
    return CLI_OK;
}
