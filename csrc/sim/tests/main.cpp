#include "check.h"

int main(int argc, char** argv) { return fastattn::simtest::run_all(argc, argv); }
