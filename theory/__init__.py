"""Machine-checked theory for the zoo (symbolic with sympy, numeric with scipy)."""
