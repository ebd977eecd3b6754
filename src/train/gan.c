/* GAN training: a generator and a discriminator, two graphs and two plans
 * trained in turn with the non-saturating loss (Goodfellow et al. 2014,
 * section 3) and Adam, as the DCGAN paper and the PyTorch DCGAN example do.
 *
 * D's graph ends in BCE-with-logits against a target input (1 real, 0
 * fake) and asks for the gradient of its image input; G's graph has no loss
 * of its own: keel_graph_backward_from seeds it with an input holding
 * d loss / d image, which D's backward pass produced. */
#include "train/train_internal.h"
#include "keel/gan.h"
#include "keel/visualize.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Streams of the noise generator, so training, the grid and the score draw
 * independent noise from one seed. */
static const uint64_t noise_train = 0x747261696eull, noise_grid = 0x67726964ull, noise_score = 0x73636f7265ull;

typedef struct gan_net {
    keel_graph *graph;
    keel_model_io io;
    keel_plan *plan;
    keel_optimizer *optimizer;
} gan_net;

struct keel_gan {
    keel_context *ctx;
    keel_gan_opts opts;
    char *device, *out_dir;

    gan_net g, d;
    keel_node *image_grad;   /* G: the input that seeds its backward pass */
    keel_node *targets;      /* D: BCE targets {batch, 1} */
    keel_node *loss;         /* D: BCE with logits */
    keel_node *d_input_grad; /* D: d loss / d images */
    keel_loader *loader;

    int channels, height, width, latent;
    int64_t image_size;      /* floats per image */
    int64_t steps_per_epoch, global_step;
    int epochs_done;
    keel_rng rng;

    float *noise, *fake, *fake_grad, *ones, *zeros, *logits; /* one batch each */
    float *grid_noise;
    float *grad_stash, *stash_velocity; /* D's device blocks for the summed gradient */
};

keel_gan_opts keel_gan_default_opts(void)
{
    keel_gan_opts o = {0};
    o.batch = 64;
    o.epochs = 10;
    o.g_optimizer = keel_optimizer_defaults(KEEL_OPTIMIZER_ADAM);
    o.g_optimizer.lr = 2e-4f;
    o.g_optimizer.beta1 = 0.5f;
    o.d_optimizer = o.g_optimizer;
    o.seed = 1;
    o.device = "cpu";
    o.grid = 8;
    o.fid_samples = 2000;
    return o;
}

/* ---- creation ------------------------------------------------------------------ */

static keel_status check_opts(const keel_gan_opts *o)
{
    if (!o->train)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the GAN needs a training set (opts.train)");
    if (o->batch < 2)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the batch size must be at least 2 (batch norm), got %lld",
                         (long long)o->batch);
    if (o->epochs < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the number of epochs must be at least 1, got %d", o->epochs);
    if (keel_dataset_size(o->train) < o->batch)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the training set has %lld images, fewer than one batch of %lld",
                         (long long)keel_dataset_size(o->train), (long long)o->batch);
    if (o->grid < 0 || o->fid_samples < 0 || o->fid_samples == 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "grid must be >= 0 and fid_samples 0 or >= 2");
    return KEEL_OK;
}

/* Real pixels in [-1, 1], the generator's tanh range. */
static keel_status set_normalization(keel_gan *gan)
{
    float *half = malloc((size_t)gan->channels * sizeof *half);
    if (!half)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int c = 0; c < gan->channels; c++)
        half[c] = 0.5f;
    keel_status st = keel_dataset_set_normalization(gan->opts.train, half, half);
    free(half);
    return st;
}

static keel_status build(keel_gan *gan, gan_net *net, keel_build_fn custom, const char *model, const char *what)
{
    keel_model_opts mo = {.batch = gan->opts.batch, .classes = 1, .in_channels = gan->channels,
                          .height = gan->height, .width = gan->width, .training = true};
    net->graph = keel_graph_new();
    if (!net->graph)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the %s graph", what);
    keel_status st = custom ? custom(net->graph, &mo, &net->io, gan->opts.build_user)
                            : keel_model_build(net->graph, model, &mo, &net->io);
    if (st == KEEL_OK && keel_graph_status(net->graph) != KEEL_OK)
        st = keel_fail(keel_graph_status(net->graph), "%s", keel_graph_error(net->graph));
    if (st == KEEL_OK && (!net->io.images || !net->io.logits))
        st = keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the %s builder did not set its images and logits nodes", what);
    return st == KEEL_OK ? KEEL_OK : keel_fail_prefix(st, "building the %s: ", what);
}

static bool same_shape(const keel_node *x, int ndim, const int64_t *shape)
{
    int64_t have[KEEL_MAX_DIMS];
    if (keel_node_shape(x, have) != ndim)
        return false;
    for (int d = 0; d < ndim; d++)
        if (have[d] != shape[d])
            return false;
    return true;
}

static keel_status build_generator(keel_gan *gan)
{
    keel_status st = build(gan, &gan->g, gan->opts.generator, "dcgan-g", "generator");
    if (st != KEEL_OK)
        return st;
    const int64_t image[4] = {gan->opts.batch, gan->channels, gan->height, gan->width};
    if (!same_shape(gan->g.io.logits, 4, image))
        return keel_fail(KEEL_ERR_SHAPE, "the generator's output '%s' is not {%lld, %d, %d, %d}, the shape of a "
                         "batch of training images", keel_node_name(gan->g.io.logits), (long long)gan->opts.batch,
                         gan->channels, gan->height, gan->width);
    gan->latent = (int)(keel_node_numel(gan->g.io.images) / gan->opts.batch);
    gan->image_grad = keel_input(gan->g.graph, "gan.image_grad", 4, image);
    keel_graph_keep(gan->g.graph, gan->g.io.logits);
    return keel_graph_backward_from(gan->g.graph, gan->g.io.logits, gan->image_grad);
}

static keel_status build_discriminator(keel_gan *gan)
{
    keel_status st = build(gan, &gan->d, gan->opts.discriminator, "dcgan-d", "discriminator");
    if (st != KEEL_OK)
        return st;
    const int64_t logit[2] = {gan->opts.batch, 1};
    if (!same_shape(gan->d.io.logits, 2, logit))
        return keel_fail(KEEL_ERR_SHAPE, "the discriminator must end in one logit per image ({batch, 1})");
    keel_graph *g = gan->d.graph;
    gan->targets = keel_input(g, "gan.targets", 2, logit);
    gan->loss = keel_bce_with_logits(g, "gan.loss", gan->d.io.logits, gan->targets);
    keel_graph_keep(g, gan->d.io.logits);
    keel_graph_require_grad(g, gan->d.io.images);
    st = keel_graph_backward(g, gan->loss);
    gan->d_input_grad = keel_graph_grad(g, gan->d.io.images);
    return st;
}

static keel_status compile(keel_gan *gan, gan_net *net, uint64_t seed, const keel_optimizer_opts *opt)
{
    keel_plan_opts po = {.devices = gan->device, .seed = seed, .deterministic = gan->opts.deterministic};
    keel_status st = keel_plan_compile(&net->plan, net->graph, gan->ctx, &po);
    /* The gradient stash adds whole blocks: one device holds them all. */
    if (st == KEEL_OK && net->plan->n_devices != 1)
        st = keel_fail(KEEL_ERR_UNSUPPORTED, "keel gan runs on one device; '%s' names %d", gan->device,
                       net->plan->n_devices);
    if (st == KEEL_OK)
        st = keel_optimizer_create(&net->optimizer, net->plan, opt);
    return st;
}

static keel_status alloc_buffers(keel_gan *gan)
{
    int64_t b = gan->opts.batch, grid = (int64_t)gan->opts.grid * gan->opts.grid;
    gan->noise = malloc((size_t)(b * gan->latent) * sizeof(float));
    gan->fake = malloc((size_t)(b * gan->image_size) * sizeof(float));
    gan->fake_grad = malloc((size_t)(b * gan->image_size) * sizeof(float));
    gan->ones = malloc((size_t)b * sizeof(float));
    gan->zeros = calloc((size_t)b, sizeof(float));
    gan->logits = malloc((size_t)b * sizeof(float));
    gan->grid_noise = malloc((size_t)(grid > 0 ? grid * gan->latent : 1) * sizeof(float));
    if (!gan->noise || !gan->fake || !gan->fake_grad || !gan->ones || !gan->zeros || !gan->logits || !gan->grid_noise)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the GAN's batch buffers");
    for (int64_t i = 0; i < b; i++)
        gan->ones[i] = 1.0f;
    keel_plan *plan = gan->d.plan;
    size_t floats = (size_t)plan->param_floats + 16;
    gan->grad_stash = plan->backend->alloc(plan->device, floats * sizeof(float));
    gan->stash_velocity = plan->backend->alloc(plan->device, floats * sizeof(float));
    if (!gan->grad_stash || !gan->stash_velocity)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate the discriminator's gradient stash on %s",
                         gan->device);
    keel_status st = plan->backend->fill(plan->device, gan->stash_velocity, 0.0f, floats);
    if (st == KEEL_OK && grid > 0)
        st = keel_gan_noise(gan, gan->opts.seed ^ noise_grid, grid, gan->grid_noise);
    return st;
}

static keel_status create(keel_gan *gan)
{
    keel_dataset_image_shape(gan->opts.train, &gan->channels, &gan->height, &gan->width);
    gan->image_size = (int64_t)gan->channels * gan->height * gan->width;
    keel_rng_init(&gan->rng, gan->opts.seed ^ noise_train);
    if (gan->opts.fid) {
        int c, h, w;
        keel_fid_image_shape(gan->opts.fid, &c, &h, &w);
        if (c != gan->channels || h != gan->height || w != gan->width)
            return keel_fail(KEEL_ERR_SHAPE, "the scoring classifier takes %dx%dx%d images but the training images "
                             "are %dx%dx%d", c, h, w, gan->channels, gan->height, gan->width);
    }
    keel_status st = set_normalization(gan);
    if (st == KEEL_OK)
        st = build_generator(gan);
    if (st == KEEL_OK)
        st = build_discriminator(gan);
    if (st == KEEL_OK)
        st = compile(gan, &gan->g, gan->opts.seed, &gan->opts.g_optimizer);
    if (st == KEEL_OK)
        st = compile(gan, &gan->d, gan->opts.seed + 1, &gan->opts.d_optimizer);
    if (st == KEEL_OK)
        st = alloc_buffers(gan);
    if (st == KEEL_OK) {
        keel_loader_opts lo = {.batch = gan->opts.batch, .shuffle = true, .seed = gan->opts.seed, .drop_last = true};
        st = keel_loader_create(&gan->loader, gan->opts.train, &lo);
    }
    if (st == KEEL_OK)
        gan->steps_per_epoch = keel_loader_batches(gan->loader);
    return st;
}

keel_status keel_gan_create(keel_gan **out, keel_context *ctx, const keel_gan_opts *opts)
{
    if (!out || !ctx || !opts)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_create: out, ctx and opts are required");
    *out = NULL;
    keel_status st = check_opts(opts);
    if (st != KEEL_OK)
        return st;
    keel_gan *gan = calloc(1, sizeof *gan);
    if (!gan)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the GAN");
    gan->ctx = ctx;
    gan->opts = *opts;
    gan->device = keel_strdup(opts->device ? opts->device : "cpu");
    gan->out_dir = opts->out_dir ? keel_strdup(opts->out_dir) : NULL;
    if (!gan->device || (opts->out_dir && !gan->out_dir))
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the GAN");
    gan->opts.device = gan->device;
    gan->opts.out_dir = gan->out_dir;
    if (!gan->opts.fid_samples)
        gan->opts.fid_samples = 2000;
    if (st == KEEL_OK)
        st = create(gan);
    if (st != KEEL_OK) {
        keel_gan_destroy(gan);
        return st;
    }
    *out = gan;
    return KEEL_OK;
}

static void net_free(gan_net *net)
{
    keel_optimizer_destroy(net->optimizer);
    keel_plan_destroy(net->plan);
    keel_graph_free(net->graph);
}

void keel_gan_destroy(keel_gan *gan)
{
    if (!gan)
        return;
    keel_plan *plan = gan->d.plan;
    if (plan && gan->grad_stash)
        plan->backend->free(plan->device, gan->grad_stash);
    if (plan && gan->stash_velocity)
        plan->backend->free(plan->device, gan->stash_velocity);
    keel_loader_destroy(gan->loader);
    net_free(&gan->g);
    net_free(&gan->d);
    free(gan->noise);
    free(gan->fake);
    free(gan->fake_grad);
    free(gan->ones);
    free(gan->zeros);
    free(gan->logits);
    free(gan->grid_noise);
    free(gan->device);
    free(gan->out_dir);
    free(gan);
}

/* ---- one step ------------------------------------------------------------------------ */

/* D's gradient sums a real and a fake batch, each run on its own so that
 * batch norm never mixes them; the plan's gradient block holds one backward
 * pass. The first pass is set aside and added back with the backend's fused
 * SGD update at learning rate -1 and momentum 0, i.e. w += g, which every
 * backend has and which allocates nothing. */
static keel_status stash_add(keel_gan *gan, float *into, const float *gradient)
{
    keel_plan *plan = gan->d.plan;
    return plan->backend->sgd_update(plan->device, into, gan->stash_velocity, gradient, plan->param_floats, -1.0f,
                                     0.0f, 0.0f, false);
}

static keel_status stash_gradient(keel_gan *gan)
{
    keel_plan *plan = gan->d.plan;
    keel_status st = plan->backend->fill(plan->device, gan->grad_stash, 0.0f, (size_t)plan->param_floats);
    return st == KEEL_OK ? stash_add(gan, gan->grad_stash, plan->grad_blocks[0]) : st;
}

/* One forward and backward pass of D on `images` against `targets`: the
 * loss and the mean of sigmoid(logit). */
static keel_status discriminate(keel_gan *gan, const float *images, const float *targets, float *loss, float *mean_p)
{
    keel_plan *plan = gan->d.plan;
    keel_status st = keel_plan_set_input(plan, gan->d.io.images, images);
    if (st == KEEL_OK)
        st = keel_plan_set_input(plan, gan->targets, targets);
    if (st == KEEL_OK)
        st = keel_plan_forward(plan, true);
    if (st == KEEL_OK)
        st = keel_plan_backward(plan);
    if (st == KEEL_OK)
        st = keel_plan_read(plan, gan->loss, loss);
    if (st == KEEL_OK && mean_p) {
        st = keel_plan_read(plan, gan->d.io.logits, gan->logits);
        double sum = 0;
        for (int64_t i = 0; i < gan->opts.batch; i++)
            sum += 1.0 / (1.0 + exp(-(double)gan->logits[i]));
        *mean_p = (float)(sum / (double)gan->opts.batch);
    }
    return st;
}

static void draw_noise(keel_rng *rng, int64_t count, float *noise)
{
    for (int64_t i = 0; i < count; i++)
        noise[i] = keel_rng_normal(rng);
}

static keel_status generate_fake(keel_gan *gan, const float *noise)
{
    if (noise)
        memcpy(gan->noise, noise, (size_t)(gan->opts.batch * gan->latent) * sizeof *noise);
    else
        draw_noise(&gan->rng, gan->opts.batch * gan->latent, gan->noise);
    keel_status st = keel_plan_set_input(gan->g.plan, gan->g.io.images, gan->noise);
    if (st == KEEL_OK)
        st = keel_plan_forward(gan->g.plan, true);
    if (st == KEEL_OK)
        st = keel_plan_read(gan->g.plan, gan->g.io.logits, gan->fake);
    return st;
}

static keel_status discriminator_step(keel_gan *gan, const float *real, keel_gan_losses *l)
{
    float loss_real = 0, loss_fake = 0;
    keel_status st = discriminate(gan, real, gan->ones, &loss_real, &l->d_real);
    if (st == KEEL_OK)
        st = stash_gradient(gan);
    if (st == KEEL_OK)
        st = discriminate(gan, gan->fake, gan->zeros, &loss_fake, &l->d_fake);
    if (st == KEEL_OK)
        st = stash_add(gan, gan->d.plan->grad_blocks[0], gan->grad_stash);
    if (st == KEEL_OK)
        st = keel_optimizer_step(gan->d.optimizer, gan->opts.d_optimizer.lr);
    l->d_loss = loss_real + loss_fake;
    return st;
}

/* Non-saturating: G maximises log D(G(z)), i.e. minimises BCE(D(G(z)), 1).
 * D's parameter gradients from this pass are discarded (overwritten by its
 * next step); its input gradient is G's output gradient. */
static keel_status generator_step(keel_gan *gan, keel_gan_losses *l)
{
    keel_status st = discriminate(gan, gan->fake, gan->ones, &l->g_loss, NULL);
    if (st == KEEL_OK)
        st = keel_plan_read(gan->d.plan, gan->d_input_grad, gan->fake_grad);
    if (st == KEEL_OK)
        st = keel_plan_set_input(gan->g.plan, gan->image_grad, gan->fake_grad);
    if (st == KEEL_OK)
        st = keel_plan_backward(gan->g.plan);
    if (st == KEEL_OK)
        st = keel_optimizer_step(gan->g.optimizer, gan->opts.g_optimizer.lr);
    return st;
}

keel_status keel_gan_step(keel_gan *gan, const float *real, const float *noise, keel_gan_losses *losses)
{
    if (!gan || !real)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_step: gan and real images are required");
    keel_gan_losses l = {0};
    keel_status st = generate_fake(gan, noise);
    if (st == KEEL_OK)
        st = discriminator_step(gan, real, &l);
    if (st == KEEL_OK)
        st = generator_step(gan, &l);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "GAN step %lld: ", (long long)gan->global_step + 1);
    if (!isfinite(l.d_loss) || !isfinite(l.g_loss))
        return keel_fail(KEEL_ERR_STATE, "GAN step %lld: the losses became D %g, G %g; try a lower learning rate",
                         (long long)gan->global_step + 1, (double)l.d_loss, (double)l.g_loss);
    gan->global_step++;
    if (losses)
        *losses = l;
    return KEEL_OK;
}

/* ---- sampling ------------------------------------------------------------------------- */

int keel_gan_latent(const keel_gan *gan) { return gan ? gan->latent : 0; }

keel_status keel_gan_noise(const keel_gan *gan, uint64_t seed, int64_t count, float *noise)
{
    if (!gan || !noise || count < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_noise: gan and noise are required");
    keel_rng rng;
    keel_rng_init(&rng, seed);
    draw_noise(&rng, count * gan->latent, noise);
    return KEEL_OK;
}

keel_status keel_gan_generate(keel_gan *gan, const float *noise, int64_t count, float *images)
{
    if (!gan || !noise || !images || count < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_generate: gan, noise and images are required");
    int64_t b = gan->opts.batch;
    for (int64_t start = 0; start < count; start += b) {
        int64_t real = count - start < b ? count - start : b;
        memset(gan->noise, 0, (size_t)(b * gan->latent) * sizeof(float));
        memcpy(gan->noise, noise + start * gan->latent, (size_t)(real * gan->latent) * sizeof(float));
        keel_status st = keel_plan_set_input(gan->g.plan, gan->g.io.images, gan->noise);
        if (st == KEEL_OK)
            st = keel_plan_forward(gan->g.plan, false);
        if (st == KEEL_OK)
            st = keel_plan_read(gan->g.plan, gan->g.io.logits, gan->fake);
        if (st != KEEL_OK)
            return st;
        memcpy(images + start * gan->image_size, gan->fake, (size_t)(real * gan->image_size) * sizeof(float));
    }
    return KEEL_OK;
}

keel_status keel_gan_write_grid(keel_gan *gan, const char *path)
{
    if (!gan || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_write_grid: gan and path are required");
    int count = gan->opts.grid * gan->opts.grid;
    if (count == 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the GAN was created with grid 0 (no sample grid)");
    float *images = malloc((size_t)((int64_t)count * gan->image_size) * sizeof *images);
    if (!images)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the sample grid");
    keel_status st = keel_gan_generate(gan, gan->grid_noise, count, images);
    keel_picture picture = {0};
    if (st == KEEL_OK) {
        keel_grid_opts o = {.columns = gan->opts.grid, .padding = 2, .zoom = 2, .scale = KEEL_GRID_RANGE,
                            .low = -1.0f, .high = 1.0f, .background = 255};
        st = keel_grid_make(&picture, images, count, gan->channels, gan->height, gan->width, &o);
    }
    if (st == KEEL_OK)
        st = keel_picture_save_png(&picture, path);
    keel_picture_release(&picture);
    free(images);
    return st;
}

static keel_status score(keel_gan *gan, keel_fid_score *out)
{
    int64_t count = gan->opts.fid_samples;
    float *noise = malloc((size_t)(count * gan->latent) * sizeof *noise);
    float *images = malloc((size_t)(count * gan->image_size) * sizeof *images);
    keel_status st = noise && images ? keel_gan_noise(gan, gan->opts.seed ^ noise_score, count, noise)
                                     : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for %lld samples",
                                                 (long long)count);
    if (st == KEEL_OK)
        st = keel_gan_generate(gan, noise, count, images);
    if (st == KEEL_OK) {
        for (int64_t i = 0; i < count * gan->image_size; i++)
            images[i] = 0.5f * (images[i] + 1.0f); /* tanh range to [0, 1] pixels */
        st = keel_fid_score_images(gan->opts.fid, images, count, out);
    }
    free(noise);
    free(images);
    return st;
}

/* ---- checkpoints ----------------------------------------------------------------------- */

static keel_status save_net(keel_gan *gan, gan_net *net, const char *model, const char *path)
{
    keel_st_writer *w = NULL;
    float *weights = NULL, *state = NULL;
    keel_status st = keel_st_writer_new(&w);
    if (st == KEEL_OK)
        st = keel_weights_export(net->plan, w, &weights);
    if (st == KEEL_OK)
        st = keel_optimizer_export(net->optimizer, w, &state);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "format", "pt");
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "model", model);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadataf(w, "epoch", "%d", gan->epochs_done);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadataf(w, "step", "%lld", (long long)gan->global_step);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadataf(w, "seed", "%llu", (unsigned long long)gan->opts.seed);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadataf(w, "latent", "%d", gan->latent);
    if (st == KEEL_OK)
        st = keel_st_writer_write(w, path);
    keel_st_writer_free(w);
    free(weights);
    free(state);
    return st;
}

keel_status keel_gan_save(keel_gan *gan, const char *generator_path, const char *discriminator_path)
{
    if (!gan || !generator_path || !discriminator_path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_save: gan and both paths are required");
    keel_status st = save_net(gan, &gan->g, gan->opts.generator ? "custom" : "dcgan-g", generator_path);
    if (st == KEEL_OK)
        st = save_net(gan, &gan->d, gan->opts.discriminator ? "custom" : "dcgan-d", discriminator_path);
    return st;
}

/* ---- epochs ------------------------------------------------------------------------------ */

static void report(const keel_gan *gan, const keel_gan_progress *p)
{
    if (gan->opts.progress)
        gan->opts.progress(p, gan->opts.progress_user);
}

static keel_status train_epoch(keel_gan *gan, keel_gan_epoch_stats *stats)
{
    keel_gan_progress p = {.event = KEEL_GAN_EPOCH_BEGIN, .epoch = gan->epochs_done + 1,
                           .epochs = gan->opts.epochs, .steps = gan->steps_per_epoch};
    keel_status st = keel_loader_start_epoch(gan->loader, gan->epochs_done);
    if (st != KEEL_OK)
        return st;
    report(gan, &p);
    double start = keel_train_now(), d_sum = 0, g_sum = 0, real_sum = 0, fake_sum = 0;
    p.event = KEEL_GAN_STEP;
    for (;;) {
        const float *images;
        const int32_t *labels;
        int64_t count = 0;
        st = keel_loader_next(gan->loader, &images, &labels, &count);
        if (st != KEEL_OK || count == 0)
            break;
        st = keel_gan_step(gan, images, NULL, &p.losses);
        if (st != KEEL_OK)
            return st;
        p.step++;
        d_sum += p.losses.d_loss;
        g_sum += p.losses.g_loss;
        real_sum += p.losses.d_real;
        fake_sum += p.losses.d_fake;
        p.mean_d_loss = d_sum / (double)p.step;
        p.mean_g_loss = g_sum / (double)p.step;
        p.elapsed_seconds = keel_train_now() - start;
        p.images_per_second = p.elapsed_seconds > 0 ? (double)(p.step * gan->opts.batch) / p.elapsed_seconds : 0;
        p.eta_seconds = p.elapsed_seconds / (double)p.step * (double)(p.steps - p.step);
        report(gan, &p);
    }
    if (st != KEEL_OK)
        return st;
    memset(stats, 0, sizeof *stats);
    stats->epoch = p.epoch;
    double steps = p.step > 0 ? (double)p.step : 1.0;
    stats->d_loss = d_sum / steps;
    stats->g_loss = g_sum / steps;
    stats->d_real = real_sum / steps;
    stats->d_fake = fake_sum / steps;
    stats->seconds = keel_train_now() - start;
    stats->images_per_second = stats->seconds > 0 ? (double)p.step * (double)gan->opts.batch / stats->seconds : 0;
    return KEEL_OK;
}

static keel_status out_path(const keel_gan *gan, const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", gan->out_dir, name);
    if (n < 0 || (size_t)n >= size)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the output folder name '%s' is too long", gan->out_dir);
    return KEEL_OK;
}

static keel_status write_outputs(keel_gan *gan, keel_gan_epoch_stats *stats)
{
    char name[64], generator[600], discriminator[600];
    snprintf(name, sizeof name, "samples-epoch-%02d.png", stats->epoch);
    keel_status st = KEEL_OK;
    if (gan->opts.grid > 0) {
        st = out_path(gan, name, stats->grid_path, sizeof stats->grid_path);
        if (st == KEEL_OK)
            st = keel_gan_write_grid(gan, stats->grid_path);
    }
    if (st == KEEL_OK)
        st = out_path(gan, "generator.safetensors", generator, sizeof generator);
    if (st == KEEL_OK)
        st = out_path(gan, "discriminator.safetensors", discriminator, sizeof discriminator);
    if (st == KEEL_OK)
        st = keel_gan_save(gan, generator, discriminator);
    return st;
}

keel_status keel_gan_epoch(keel_gan *gan, keel_gan_epoch_stats *out)
{
    if (!gan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_epoch: gan is NULL");
    keel_gan_epoch_stats stats;
    keel_status st = train_epoch(gan, &stats);
    if (st != KEEL_OK)
        return st;
    gan->epochs_done++;
    keel_gan_progress p = {.event = KEEL_GAN_SCORE_BEGIN, .epoch = stats.epoch, .epochs = gan->opts.epochs,
                           .step = gan->steps_per_epoch, .steps = gan->steps_per_epoch,
                           .mean_d_loss = stats.d_loss, .mean_g_loss = stats.g_loss,
                           .images_per_second = stats.images_per_second, .elapsed_seconds = stats.seconds};
    report(gan, &p);
    if (gan->opts.fid) {
        double start = keel_train_now();
        st = score(gan, &stats.score);
        if (st != KEEL_OK)
            return keel_fail_prefix(st, "scoring the samples of epoch %d: ", stats.epoch);
        stats.scored = true;
        stats.score_seconds = keel_train_now() - start;
    }
    if (gan->out_dir && (st = write_outputs(gan, &stats)) != KEEL_OK)
        return st;
    p.event = KEEL_GAN_EPOCH_END;
    p.stats = &stats;
    report(gan, &p);
    if (out)
        *out = stats;
    return KEEL_OK;
}

keel_status keel_gan_run(keel_gan *gan)
{
    if (!gan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_gan_run: gan is NULL");
    while (gan->epochs_done < gan->opts.epochs) {
        keel_status st = keel_gan_epoch(gan, NULL);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

int keel_gan_epochs_done(const keel_gan *gan) { return gan ? gan->epochs_done : 0; }
keel_plan *keel_gan_generator_plan(keel_gan *gan) { return gan ? gan->g.plan : NULL; }
keel_plan *keel_gan_discriminator_plan(keel_gan *gan) { return gan ? gan->d.plan : NULL; }

void keel_gan_image_shape(const keel_gan *gan, int *channels, int *height, int *width)
{
    *channels = gan ? gan->channels : 0;
    *height = gan ? gan->height : 0;
    *width = gan ? gan->width : 0;
}
