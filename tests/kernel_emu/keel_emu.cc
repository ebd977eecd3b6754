/* The scheduler of the CUDA grid emulator (keel_emu.h): blocks in order,
 * the threads of a block as fibers that switch only at barriers.
 *
 * A fiber starts on its own stack with makecontext/setcontext; after that,
 * switches are _setjmp/_longjmp, because swapcontext saves the signal mask
 * with a system call each time, which made reductions ten times slower.
 * Fortified longjmp refuses to jump to another stack, hence the #undef. */
#undef _FORTIFY_SOURCE
#include "keel_emu.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

enum : unsigned { WARP = 32, MAX_THREADS = 1024, MAX_WARPS = MAX_THREADS / WARP, STACK_BYTES = 64 * 1024 };

/* The threads that meet at one barrier: the block, or one warp. It opens
 * once every thread that has not ended waits there. */
struct group {
    unsigned size, waiting, ended;
    bool open() const { return waiting > 0 && waiting + ended == size; }
};

struct fiber {
    ucontext_t start; /* its first entry */
    jmp_buf resume;   /* where it left off, once started */
    bool started;
    unsigned thread; /* the thread it runs: its index in the block */
    group *waits;    /* the barrier it waits at, or null */
};

/* The block being run. */
struct {
    void (*body)(void *);
    void *ctx;
    unsigned threads, next; /* next: the first thread not started yet */
    group block, warps[MAX_WARPS];
    /* Shuffled values in two rows used in turn: a lane released from one
     * shuffle may offer its next value before a slower lane has read. */
    unsigned char slots[2][MAX_THREADS][8];
    unsigned shuffles[MAX_THREADS]; /* made by each thread so far */
} run;

/* Fibers and their stacks live as long as the process: each block reuses
 * them. At most one per thread of the largest block. */
fiber fibers[MAX_THREADS];
unsigned n_fibers;
fiber *idle[MAX_THREADS];
unsigned n_idle;
fiber *ready[MAX_THREADS]; /* released from a barrier, resumed in this order */
unsigned n_ready, ready_at;
fiber *current;
jmp_buf scheduler;
cudaError_t last_error = cudaSuccess;
bool launching;

[[noreturn]] void die(const char *message)
{
    fprintf(stderr, "keel_emu: block (%u, %u, %u): %s\n", blockIdx.x, blockIdx.y, blockIdx.z, message);
    abort();
}

void set_thread(unsigned t)
{
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

/* Back to the scheduler; returns when the scheduler resumes this fiber. */
void yield()
{
    if (_setjmp(current->resume) == 0)
        _longjmp(scheduler, 1);
}

void wait_at(group *g)
{
    g->waiting++;
    current->waits = g;
    yield();
}

/* Each fiber takes the block's threads in turn, until none is left, then
 * waits for the next block. */
void fiber_main()
{
    for (;;) {
        while (run.next < run.threads) {
            unsigned t = run.next++;
            current->thread = t;
            set_thread(t);
            run.body(run.ctx);
            t = current->thread;
            run.block.ended++;
            run.warps[t / WARP].ended++;
        }
        idle[n_idle++] = current;
        yield();
    }
}

fiber *new_fiber()
{
    if (n_fibers == MAX_THREADS)
        die("more fibers than threads");
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* A stack that overflows hits the inaccessible page below it. */
    char *base = (char *)mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base, page, PROT_NONE) != 0)
        die("no memory for a fiber stack");
    fiber *f = &fibers[n_fibers++];
    getcontext(&f->start);
    f->start.uc_stack.ss_sp = base + page;
    f->start.uc_stack.ss_size = STACK_BYTES;
    f->start.uc_link = nullptr; /* fiber_main never returns */
    makecontext(&f->start, fiber_main, 0);
    return f;
}

void resume(fiber *f)
{
    current = f;
    set_thread(f->thread);
    if (_setjmp(scheduler) != 0)
        return;
    if (!f->started) {
        f->started = true;
        setcontext(&f->start);
    }
    _longjmp(f->resume, 1);
}

/* Moves the waiters of every open barrier to the ready list, in a fixed
 * order; false when no barrier is open. */
bool open_barriers()
{
    n_ready = ready_at = 0;
    unsigned warps = (run.threads + WARP - 1) / WARP;
    for (unsigned w = 0; w <= warps; w++) {
        group *g = w < warps ? &run.warps[w] : &run.block;
        if (!g->open())
            continue;
        for (unsigned i = 0; i < n_fibers; i++)
            if (fibers[i].waits == g) {
                fibers[i].waits = nullptr;
                ready[n_ready++] = &fibers[i];
            }
        g->waiting = 0;
    }
    return n_ready > 0;
}

void run_block()
{
    run.next = 0;
    run.block = group{run.threads, 0, 0};
    for (unsigned t = 0; t < run.threads; t += WARP) {
        unsigned lanes = run.threads - t < WARP ? run.threads - t : WARP;
        run.warps[t / WARP] = group{lanes, 0, 0};
    }
    memset(run.shuffles, 0, sizeof run.shuffles);
    n_ready = ready_at = 0;
    for (;;) {
        fiber *f;
        if (ready_at < n_ready)
            f = ready[ready_at++];
        else if (run.next < run.threads)
            f = n_idle > 0 ? idle[--n_idle] : new_fiber();
        else if (open_barriers())
            continue;
        else
            break;
        resume(f);
    }
    if (run.block.ended != run.threads)
        die("deadlock: threads wait at a barrier that others of their block or warp never reach");
}

} // namespace

void __syncthreads(void)
{
    wait_at(&run.block);
}

namespace keel_emu {

void shuffle_xor(const void *value, void *out, unsigned bytes, unsigned lane_mask)
{
    if (lane_mask >= WARP)
        die("a shuffle with a lane outside the warp");
    unsigned t = current->thread, round = ++run.shuffles[t], row = round % 2;
    memcpy(run.slots[row][t], value, bytes);
    wait_at(&run.warps[t / WARP]);
    /* A lane that ended before this round offered nothing. */
    unsigned src = t / WARP * WARP + (t % WARP ^ lane_mask);
    if (run.shuffles[src] >= round)
        memcpy(out, run.slots[row][src], bytes);
    else
        memset(out, 0xff, bytes);
}

bool run_grid(dim3 grid, dim3 block, void (*body)(void *), void *ctx)
{
    uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_THREADS || block.z > 64 || grid.x == 0 || grid.x > 0x7fffffffu ||
        grid.y == 0 || grid.y > 65535 || grid.z == 0 || grid.z > 65535) {
        last_error = cudaErrorInvalidConfiguration;
        return false;
    }
    if (launching)
        die("a launch from inside a kernel");
    launching = true;
    run.body = body;
    run.ctx = ctx;
    run.threads = (unsigned)threads;
    blockDim = block;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = uint3{x, y, z};
                run_block();
            }
    launching = false;
    return true;
}

} // namespace keel_emu

extern "C" cudaError_t cudaGetLastError(void)
{
    cudaError_t error = last_error;
    last_error = cudaSuccess;
    return error;
}
