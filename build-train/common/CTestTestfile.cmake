# CMake generated Testfile for 
# Source directory: /work/main/common
# Build directory: /work/main/build-train/common
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
include("/work/main/build-train/common/common_test[1]_include.cmake")
