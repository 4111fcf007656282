"""dmattack.core.text.comma_list: the one comma-list parser of the options."""

import pytest

from dmattack.core.errors import ConfigError
from dmattack.core.option_types import parse_list
from dmattack.core.text import comma_list


def test_comma_list_strips_and_drops_empty_items():
    assert comma_list(" fgsm, pgd,,random ,") == ["fgsm", "pgd", "random"]
    assert comma_list(" , ") == []


def test_an_empty_named_list_is_one_line_naming_the_option():
    with pytest.raises(ConfigError, match=r"^--metrics is empty; give a comma-separated list$"
                       ) as err:
        comma_list(",", "metrics")
    assert err.value.field == "metrics"


def test_parse_list_uses_it_and_checks_the_allowed_names():
    assert parse_list("a, b", "method", ("a", "b")) == ["a", "b"]
    with pytest.raises(ConfigError, match="--method is empty"):
        parse_list(" ", "method")
    with pytest.raises(ConfigError, match="unknown method 'c'; allowed: a, b"):
        parse_list("a,c", "method", ("a", "b"))
