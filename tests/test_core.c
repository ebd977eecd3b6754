/* Core: status text, errors, host tensors, the random number generator. */
#include "support/support.h"
#include "core/core.h"
#include <math.h>
#include <string.h>

static void test_status_strings(void **state)
{
    (void)state;
    for (int s = KEEL_OK; s <= KEEL_ERR_NOT_FOUND; s++) {
        const char *text = keel_status_string((keel_status)s);
        assert_non_null(text);
        assert_true(strlen(text) > 1);
    }
    assert_string_equal(keel_status_string(KEEL_ERR_SHAPE), "shape mismatch");
}

static void test_last_error_is_kept(void **state)
{
    (void)state;
    assert_int_equal(keel_fail(KEEL_ERR_IO, "cannot open %s", "x.npy"), KEEL_ERR_IO);
    assert_string_equal(keel_last_error(), "cannot open x.npy");
    keel_fail_prefix(KEEL_ERR_IO, "loading model: ");
    assert_string_equal(keel_last_error(), "loading model: cannot open x.npy");
}

static void test_tensor_new_and_wrap(void **state)
{
    (void)state;
    keel_tensor *t = NULL;
    int64_t shape[4] = {2, 3, 4, 5};
    KS_OK(keel_tensor_new(&t, KEEL_F32, 4, shape));
    assert_int_equal(keel_tensor_numel(t), 120);
    assert_int_equal(t->strides[0], 60);
    assert_int_equal(t->strides[3], 1);
    assert_true(keel_tensor_is_contiguous(t));
    for (int64_t i = 0; i < 120; i++)
        assert_true(keel_tensor_f32(t)[i] == 0.0f);
    keel_tensor_free(t);

    int32_t labels[3] = {1, 2, 3};
    int64_t n = 3;
    KS_OK(keel_tensor_wrap(&t, KEEL_I32, 1, &n, labels));
    assert_ptr_equal(t->data, labels);
    assert_int_equal(keel_dtype_size(t->dtype), 4);
    keel_tensor_free(t); /* must not free the caller's array */

    int64_t six[6] = {1, 1, 1, 1, 1, 1};
    assert_int_equal(keel_tensor_new(&t, KEEL_F32, 6, six), KEEL_ERR_UNSUPPORTED);
    assert_null(t);
    assert_non_null(strstr(keel_last_error(), "at most 5"));
    int64_t negative[2] = {2, -1};
    assert_int_equal(keel_tensor_new(&t, KEEL_F32, 2, negative), KEEL_ERR_SHAPE);
}

static void test_rng_is_deterministic_and_uniform(void **state)
{
    (void)state;
    keel_rng a, b;
    keel_rng_init(&a, 42);
    keel_rng_init(&b, 42);
    for (int i = 0; i < 100; i++)
        assert_true(keel_rng_next_u64(&a) == keel_rng_next_u64(&b));
    keel_rng_init(&a, 7);
    double sum = 0, sum_sq = 0, nsum = 0, nsum_sq = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double u = keel_rng_uniform(&a);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
        sum_sq += u * u;
        double z = keel_rng_normal(&a);
        nsum += z;
        nsum_sq += z * z;
    }
    /* Means within 5 standard errors of 1/2 and 0; variances within 2%. */
    assert_true(fabs(sum / n - 0.5) < 5 * sqrt(1.0 / 12 / n));
    assert_true(fabs(sum_sq / n - sum * sum / n / n - 1.0 / 12) < 0.02 / 12);
    assert_true(fabs(nsum / n) < 5 * sqrt(1.0 / n));
    assert_true(fabs(nsum_sq / n - 1.0) < 0.02);
    for (int i = 0; i < 1000; i++)
        assert_true(keel_rng_below(&a, 7) < 7);
}

static void test_shape_str(void **state)
{
    (void)state;
    char buf[96];
    int64_t shape[3] = {1, 96, 55};
    assert_string_equal(keel_shape_str(buf, sizeof buf, 3, shape), "1x96x55");
    assert_string_equal(keel_shape_str(buf, sizeof buf, 0, shape), "scalar");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_last_error_is_kept),
        cmocka_unit_test(test_tensor_new_and_wrap),
        cmocka_unit_test(test_rng_is_deterministic_and_uniform),
        cmocka_unit_test(test_shape_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
