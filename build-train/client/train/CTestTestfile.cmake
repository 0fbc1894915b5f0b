# CMake generated Testfile for 
# Source directory: /work/main/client/train
# Build directory: /work/main/build-train/client/train
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
include("/work/main/build-train/client/train/train_test[1]_include.cmake")
