/* The caching device allocator. cudaMalloc and cudaFree synchronise the
 * device and cost tens of microseconds to milliseconds, so freed blocks are
 * kept and handed out again. The planner allocates its arena, workspace and
 * parameter blocks once per plan; a second plan of the same shapes (or a
 * recompile) then reuses them without touching the driver.
 *
 * Size classes: up to 1 MiB, multiples of 512 bytes; above, multiples of
 * 2 MiB. A request takes the smallest cached block of its class or up to a
 * quarter larger, so a big cached block is not wasted on a small request. */
#include "cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

#define SMALL_LIMIT ((size_t)1 << 20)
#define SMALL_STEP ((size_t)512)
#define LARGE_STEP ((size_t)2 << 20)

static size_t size_class(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    size_t step = bytes <= SMALL_LIMIT ? SMALL_STEP : LARGE_STEP;
    return (bytes + step - 1) / step * step;
}

static bool push_block(keel_cuda_block **list, int *n, int *cap, keel_cuda_block block)
{
    if (*n == *cap) {
        int grown_cap = *cap ? *cap * 2 : 64;
        keel_cuda_block *grown = realloc(*list, (size_t)grown_cap * sizeof *grown);
        if (!grown)
            return false;
        *list = grown;
        *cap = grown_cap;
    }
    (*list)[(*n)++] = block;
    return true;
}

static keel_cuda_block take_at(keel_cuda_block *list, int *n, int at)
{
    keel_cuda_block block = list[at];
    list[at] = list[--*n];
    return block;
}

void keel_cuda_pool_init(keel_cuda_pool *pool, int ordinal)
{
    memset(pool, 0, sizeof *pool);
    pthread_mutex_init(&pool->lock, NULL);
    pool->ordinal = ordinal;
}

static int find_cached(const keel_cuda_pool *pool, size_t want)
{
    size_t limit = want + want / 4;
    int best = -1;
    for (int i = 0; i < pool->n_cached; i++) {
        size_t have = pool->cached[i].bytes;
        if (have >= want && have <= limit && (best < 0 || have < pool->cached[best].bytes))
            best = i;
    }
    return best;
}

static void release_cached_locked(keel_cuda_pool *pool)
{
    for (int i = 0; i < pool->n_cached; i++) {
        cudaFree(pool->cached[i].ptr);
        pool->stats.reserved_bytes -= (int64_t)pool->cached[i].bytes;
    }
    pool->n_cached = 0;
}

void *keel_cuda_pool_alloc(keel_cuda_pool *pool, size_t bytes)
{
    size_t want = size_class(bytes);
    keel_cuda_block block = {NULL, 0};
    pthread_mutex_lock(&pool->lock);
    int at = find_cached(pool, want);
    if (at >= 0) {
        block = take_at(pool->cached, &pool->n_cached, at);
        pool->stats.reuses++;
    } else {
        void *p = NULL;
        cudaError_t err = cudaMalloc(&p, want);
        if (err == cudaErrorMemoryAllocation && pool->n_cached > 0) {
            /* The cache holds memory another size could use: give it back. */
            cudaGetLastError();
            release_cached_locked(pool);
            err = cudaMalloc(&p, want);
        }
        if (err != cudaSuccess) {
            cudaGetLastError(); /* an allocation failure must not poison later launch checks */
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        block.ptr = p;
        block.bytes = want;
        pool->stats.reserved_bytes += (int64_t)want;
        pool->stats.device_mallocs++;
    }
    if (!push_block(&pool->live, &pool->n_live, &pool->cap_live, block)) {
        /* No host memory to track it: keep it cached rather than leak it. */
        push_block(&pool->cached, &pool->n_cached, &pool->cap_cached, block);
        pthread_mutex_unlock(&pool->lock);
        return NULL;
    }
    pool->stats.in_use_bytes += (int64_t)block.bytes;
    if (pool->stats.in_use_bytes > pool->stats.peak_in_use_bytes)
        pool->stats.peak_in_use_bytes = pool->stats.in_use_bytes;
    pthread_mutex_unlock(&pool->lock);
    return block.ptr;
}

void keel_cuda_pool_free(keel_cuda_pool *pool, void *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&pool->lock);
    for (int i = pool->n_live - 1; i >= 0; i--) {
        if (pool->live[i].ptr != p)
            continue;
        keel_cuda_block block = take_at(pool->live, &pool->n_live, i);
        pool->stats.in_use_bytes -= (int64_t)block.bytes;
        if (!push_block(&pool->cached, &pool->n_cached, &pool->cap_cached, block)) {
            cudaFree(block.ptr);
            pool->stats.reserved_bytes -= (int64_t)block.bytes;
        }
        break;
    }
    pthread_mutex_unlock(&pool->lock);
}

void keel_cuda_pool_trim(keel_cuda_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    release_cached_locked(pool);
    pthread_mutex_unlock(&pool->lock);
}

void keel_cuda_pool_destroy(keel_cuda_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    release_cached_locked(pool);
    for (int i = 0; i < pool->n_live; i++)
        cudaFree(pool->live[i].ptr);
    pool->n_live = 0;
    free(pool->cached);
    free(pool->live);
    pool->cached = pool->live = NULL;
    pool->cap_cached = pool->cap_live = 0;
    memset(&pool->stats, 0, sizeof pool->stats);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_destroy(&pool->lock);
}

void keel_cuda_pool_stats_get(keel_device *device, keel_cuda_pool_stats *stats)
{
    pthread_mutex_lock(&device->pool.lock);
    *stats = device->pool.stats;
    pthread_mutex_unlock(&device->pool.lock);
}
