// Placeholder: the models owner replaces this file (shared --model/--config/parallel/overlap flags).
#pragma once
