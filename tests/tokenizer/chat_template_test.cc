#include <catch2/catch.hpp>

#include "tokenizer/chat_template.h"
