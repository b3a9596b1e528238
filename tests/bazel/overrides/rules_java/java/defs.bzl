"""Offline stand-in for @rules_java//java:defs.bzl.

Bazel 4's @bazel_tools//tools/jdk loads these names even in a C++-only
build; each macro forwards to the rule built into Bazel.
"""

def java_binary(**kwargs):
    native.java_binary(**kwargs)

def java_import(**kwargs):
    native.java_import(**kwargs)

def java_library(**kwargs):
    native.java_library(**kwargs)

def java_runtime(**kwargs):
    native.java_runtime(**kwargs)

def java_toolchain(**kwargs):
    native.java_toolchain(**kwargs)
