"""What export signatures of several tasks share: inputs given per row, as TF Serving's row format needs."""

from __future__ import annotations

import tensorflow as tf


def per_row(value, batch, name):
    """`value` (`[B]`, or `[1]`/scalar: the same for every row) as one value per row `[B]`; another length fails,
    naming the input."""
    value = tf.reshape(value, [-1])
    n = tf.size(value)
    check = tf.debugging.Assert(tf.logical_or(tf.equal(n, 1), tf.equal(n, batch)),
                                [f"`{name}`: expected one value per row (or one for every row); got", n, "values for",
                                 batch, "rows"])
    with tf.control_dependencies([check]):
        return tf.broadcast_to(value, [batch])
