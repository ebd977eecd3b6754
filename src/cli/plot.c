/* The --plot chart: a hand-written SVG with train and test loss on the
 * left axis and test top-1 accuracy on the right one, per epoch. */
#include "cli.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { WIDTH = 820, HEIGHT = 500, LEFT = 80, RIGHT = 80, TOP = 80, BOTTOM = 64 };

typedef struct axis {
    double lo, hi, step; /* the range shown and the tick spacing */
} axis;

/* A tick step of 1, 2 or 5 times a power of ten giving about `ticks` ticks. */
static double nice_step(double span, int ticks)
{
    double raw = span / ticks;
    double p = pow(10.0, floor(log10(raw)));
    double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static axis make_axis(double lo, double hi, int ticks)
{
    if (!(hi > lo)) {
        double pad = lo != 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= pad;
        hi += pad;
    }
    axis a;
    a.step = nice_step(hi - lo, ticks);
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    return a;
}

static double map_x(int epoch, int count)
{
    double span = count > 1 ? count - 1 : 2;
    double offset = count > 1 ? epoch - 1 : epoch;
    return LEFT + (WIDTH - LEFT - RIGHT) * offset / span;
}

static double map_y(double v, const axis *a)
{
    return TOP + (HEIGHT - TOP - BOTTOM) * (a->hi - v) / (a->hi - a->lo);
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

typedef double (*series_fn)(const keel_epoch_stats *s);
static double train_loss(const keel_epoch_stats *s) { return s->train_loss; }
static double test_loss(const keel_epoch_stats *s) { return s->eval.loss; }
static double test_top1(const keel_epoch_stats *s) { return 100.0 * s->eval.top1; }

static void draw_series(FILE *f, const keel_epoch_stats *e, int count, series_fn value, const axis *a,
                        const char *color, const char *dash, bool only_evaluated)
{
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\"%s points=\"", color, dash);
    for (int i = 0; i < count; i++)
        if (!only_evaluated || e[i].evaluated)
            fprintf(f, "%.1f,%.1f ", map_x(e[i].epoch, count), map_y(value(&e[i]), a));
    fputs("\"/>\n", f);
    for (int i = 0; i < count; i++)
        if (!only_evaluated || e[i].evaluated)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", map_x(e[i].epoch, count),
                    map_y(value(&e[i]), a), color);
}

static void draw_axes(FILE *f, int count, const axis *loss, const axis *acc, bool have_acc)
{
    int x0 = LEFT, x1 = WIDTH - RIGHT, y0 = TOP, y1 = HEIGHT - BOTTOM;
    fprintf(f, "<g stroke=\"#e4e4e4\" stroke-width=\"1\">\n");
    for (double v = loss->lo; v <= loss->hi + loss->step / 2; v += loss->step)
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>\n", x0, map_y(v, loss), x1, map_y(v, loss));
    fputs("</g>\n", f);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0, x1 - x0,
            y1 - y0);
    fputs("<g font-size=\"13\" fill=\"#333\">\n", f);
    for (double v = loss->lo; v <= loss->hi + loss->step / 2; v += loss->step)
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#333\"/><text x=\"%d\" y=\"%.1f\" "
                   "text-anchor=\"end\">%g</text>\n", x0 - 5, map_y(v, loss), x0, map_y(v, loss), x0 - 8,
                map_y(v, loss) + 4, fabs(v) < loss->step / 1e6 ? 0.0 : v);
    if (have_acc)
        for (double v = acc->lo; v <= acc->hi + acc->step / 2; v += acc->step)
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#333\"/><text x=\"%d\" y=\"%.1f\" "
                       "text-anchor=\"start\">%g</text>\n", x1, map_y(v, acc), x1 + 5, map_y(v, acc), x1 + 8,
                    map_y(v, acc) + 4, v);
    int every = count > 12 ? (int)ceil(count / 12.0) : 1;
    for (int e = 1; e <= count; e += every)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#333\"/><text x=\"%.1f\" y=\"%d\" "
                   "text-anchor=\"middle\">%d</text>\n", map_x(e, count), y1, map_x(e, count), y1 + 5,
                map_x(e, count), y1 + 20, e);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"14\">epoch</text>\n", (x0 + x1) / 2,
            HEIGHT - 22);
    fprintf(f, "<text transform=\"translate(24 %d) rotate(-90)\" text-anchor=\"middle\" font-size=\"14\" "
               "fill=\"#1f77b4\">cross-entropy loss</text>\n", (y0 + y1) / 2);
    if (have_acc)
        fprintf(f, "<text transform=\"translate(%d %d) rotate(90)\" text-anchor=\"middle\" font-size=\"14\" "
                   "fill=\"#d62728\">test top-1 accuracy (%%)</text>\n", WIDTH - 22, (y0 + y1) / 2);
    fputs("</g>\n", f);
}

/* One row above the plot area, where no curve can hide it. */
static void draw_legend(FILE *f, bool have_acc)
{
    const char *labels[] = {"train loss", "test loss", "test top-1 accuracy"};
    const char *colors[] = {"#1f77b4", "#1f77b4", "#d62728"};
    const char *dashes[] = {"", " stroke-dasharray=\"6 4\"", ""};
    const int widths[] = {120, 110, 180};
    int n = have_acc ? 3 : 1, total = 0;
    for (int i = 0; i < n; i++)
        total += widths[i];
    int x = (WIDTH - total) / 2, y = TOP - 24;
    for (int i = 0; i < n; i++) {
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2.5\"%s/>"
                   "<text x=\"%d\" y=\"%d\" font-size=\"13\">%s</text>\n", x, y, x + 28, y, colors[i], dashes[i],
                x + 36, y + 4, labels[i]);
        x += widths[i];
    }
}

static void write_svg(FILE *f, const char *title, const keel_epoch_stats *e, int count)
{
    bool have_acc = false;
    double lo = INFINITY, hi = -INFINITY, acc_lo = INFINITY, acc_hi = -INFINITY;
    for (int i = 0; i < count; i++) {
        lo = fmin(lo, e[i].train_loss);
        hi = fmax(hi, e[i].train_loss);
        if (e[i].evaluated) {
            have_acc = true;
            lo = fmin(lo, e[i].eval.loss);
            hi = fmax(hi, e[i].eval.loss);
            acc_lo = fmin(acc_lo, 100.0 * e[i].eval.top1);
            acc_hi = fmax(acc_hi, 100.0 * e[i].eval.top1);
        }
    }
    if (count == 0)
        lo = 0, hi = 1;
    axis loss = make_axis(fmin(lo, 0.0), hi, 6);
    axis acc = have_acc ? make_axis(acc_lo, fmin(acc_hi, 100.0), 6) : loss;
    if (acc.hi > 100.0)
        acc.hi = 100.0;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n", WIDTH, HEIGHT, WIDTH, HEIGHT);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", WIDTH, HEIGHT);
    fprintf(f, "<text x=\"%d\" y=\"32\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\">", WIDTH / 2);
    xml_text(f, title);
    fputs("</text>\n", f);
    draw_axes(f, count, &loss, &acc, have_acc);
    if (count > 0) {
        draw_series(f, e, count, train_loss, &loss, "#1f77b4", "", false);
        if (have_acc) {
            draw_series(f, e, count, test_loss, &loss, "#1f77b4", " stroke-dasharray=\"6 4\"", true);
            draw_series(f, e, count, test_top1, &acc, "#d62728", "", true);
        }
    }
    draw_legend(f, have_acc);
    fputs("</svg>\n", f);
}

keel_status cli_plot_svg(const char *path, const char *title, const keel_epoch_stats *epochs, int count)
{
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(tmp);
        return keel_fail(KEEL_ERR_IO, "cannot write the chart %s: %s", path, strerror(errno));
    }
    write_svg(f, title, epochs, count);
    bool ok = !ferror(f);
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        keel_status st = keel_fail(KEEL_ERR_IO, "cannot write the chart %s: %s", path, strerror(errno));
        remove(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return KEEL_OK;
}
