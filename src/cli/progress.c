/* Progress of `keel train`: a bar redrawn in place (\r) on a terminal, a
 * plain line every tenth of an epoch otherwise, and one line per epoch (with
 * the top-1 and top-5 error on image datasets, as ILSVRC reports them). */
#include "cli.h"
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_init(cli_progress *p, cli_progress_mode mode, FILE *out)
{
    if (mode == CLI_PROGRESS_AUTO)
        mode = isatty(fileno(out)) ? CLI_PROGRESS_BAR : CLI_PROGRESS_LINES;
    *p = (cli_progress){.mode = mode, .out = out, .bar_width = 24};
}

static void draw_bar(cli_progress *p, const keel_progress *k)
{
    char bar[64], eta[32], rate[32];
    int filled = k->steps ? (int)(k->step * p->bar_width / k->steps) : 0;
    for (int i = 0; i < p->bar_width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[p->bar_width] = '\0';
    fprintf(p->out, "\repoch %d/%d [%s] %lld/%lld  loss %.4f  lr %.3g  %s img/s  ETA %s\033[K", k->epoch, k->epochs,
            bar, (long long)k->step, (long long)k->steps, k->mean_loss, (double)k->lr,
            cli_thousands((int64_t)k->images_per_second, rate, sizeof rate), cli_duration(k->eta_seconds, eta, sizeof eta));
    fflush(p->out);
}

static void print_line(cli_progress *p, const keel_progress *k)
{
    char eta[32], rate[32];
    fprintf(p->out, "epoch %d/%d step %lld/%lld  loss %.4f (this step %.4f)  lr %.3g  %s img/s  ETA %s\n", k->epoch,
            k->epochs, (long long)k->step, (long long)k->steps, k->mean_loss, (double)k->loss, (double)k->lr,
            cli_thousands((int64_t)k->images_per_second, rate, sizeof rate), cli_duration(k->eta_seconds, eta, sizeof eta));
    fflush(p->out);
}

static void print_epoch(cli_progress *p, const keel_epoch_stats *s, int epochs)
{
    char rate[32];
    if (p->mode == CLI_PROGRESS_BAR)
        fputs("\r\033[K", p->out);
    fprintf(p->out, "epoch %d/%d  train loss %.4f", s->epoch, epochs, s->train_loss);
    if (s->evaluated && p->errors) {
        fprintf(p->out, "  val loss %.4f  top-1 error %.2f%%  top-5 error %.2f%%", s->eval.loss,
                100.0 * (1.0 - s->eval.top1), 100.0 * (1.0 - s->eval.top5));
    } else if (s->evaluated) {
        fprintf(p->out, "  test loss %.4f  top-1 %.2f%%", s->eval.loss, 100.0 * s->eval.top1);
        if (s->eval.has_top5)
            fprintf(p->out, "  top-5 %.2f%%", 100.0 * s->eval.top5);
    }
    fprintf(p->out, "  lr %.3g  %.1f s  %s img/s\n", (double)s->lr, s->seconds,
            cli_thousands((int64_t)s->images_per_second, rate, sizeof rate));
    fflush(p->out);
}

void cli_progress_callback(const keel_progress *k, void *user)
{
    cli_progress *p = user;
    switch (k->event) {
    case KEEL_PROGRESS_EPOCH_BEGIN:
        p->next_line_step = k->steps >= 10 ? k->steps / 10 : 1;
        p->last_draw = 0;
        break;
    case KEEL_PROGRESS_STEP:
        if (p->mode == CLI_PROGRESS_BAR) {
            double t = now();
            if (t - p->last_draw >= 0.1 || k->step == k->steps) {
                p->last_draw = t;
                draw_bar(p, k);
            }
        } else if (p->mode == CLI_PROGRESS_LINES && k->step >= p->next_line_step) {
            print_line(p, k);
            p->next_line_step += k->steps >= 10 ? k->steps / 10 : 1;
        }
        break;
    case KEEL_PROGRESS_EVAL_BEGIN:
        if (p->mode == CLI_PROGRESS_BAR) {
            fprintf(p->out, "\repoch %d/%d evaluating on the test set...\033[K", k->epoch, k->epochs);
            fflush(p->out);
        }
        break;
    case KEEL_PROGRESS_EPOCH_END:
        print_epoch(p, k->stats, k->epochs);
        break;
    }
}
