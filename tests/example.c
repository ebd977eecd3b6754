#include <keel/keel.h>
#include <stdio.h>

int main(void)
{
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {8, 1, 28, 28};
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_node *labels = keel_input_labels(g, "labels", 8);
    keel_conv2d_opts conv = keel_conv_opts(5, 1, 2);           /* 5x5, stride 1, pad 2 */
    keel_pool2d_opts pool = keel_pool_opts(2, 2, 0);
    keel_node *h = keel_relu(g, "relu1", keel_conv2d(g, "conv1", x, 6, &conv));
    h = keel_flatten(g, "flat", keel_max_pool2d(g, "pool1", h, &pool));
    keel_node *loss = keel_softmax_cross_entropy(g, "loss", keel_linear(g, "fc", h, 10, NULL), labels);
    if (keel_graph_backward(g, loss) != KEEL_OK) {           /* errors are sticky: check once */
        fprintf(stderr, "%s\n", keel_graph_error(g));
        return 1;
    }

    keel_context *ctx;
    keel_plan *plan;
    keel_context_create(&ctx, NULL);
    keel_plan_opts opts = {.devices = "cpu", .seed = 1};
    if (keel_plan_compile(&plan, g, ctx, &opts) != KEEL_OK) {
        fprintf(stderr, "%s\n", keel_last_error());
        return 1;
    }
    static float images[8 * 28 * 28];
    int32_t classes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < 8 * 28 * 28; i++)
        images[i] = (float)(i % 255) / 255.0f;
    keel_plan_set_input(plan, x, images);
    keel_plan_set_input(plan, labels, classes);
    keel_plan_forward(plan, true);
    keel_plan_backward(plan);

    float value, grad[10];
    keel_plan_read(plan, loss, &value);
    keel_plan_grad_get(plan, "fc.bias", grad, 10);
    printf("loss %.4f, d loss / d fc.bias[0] = %.6f\n", value, grad[0]);

    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
    return 0;
}
