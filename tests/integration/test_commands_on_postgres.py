"""The command specifications of the unit suite, run again on the real PostgreSQL and Redis."""

from tests.unit.test_bad_input import (  # noqa: F401
    test_invalid_create_is_refused_with_invalid_params,
    test_writes_without_a_valid_key_are_401,
)
from tests.unit.test_commands import (  # noqa: F401
    test_changing_a_missing_widget_fails_with_widget_not_found,
    test_commands_on_one_sku_apply_in_the_order_accepted,
    test_create_is_accepted_with_location_then_applied_by_the_worker,
    test_create_writes_one_widget_created_event_in_the_public_shape,
    test_creating_an_existing_sku_fails_with_widget_exists,
    test_delete_removes_the_row_and_emits_widget_deleted,
    test_if_match_applies_only_at_that_version,
    test_update_changes_only_the_given_fields_and_bumps_the_version,
)
from tests.unit.test_reads import (  # noqa: F401
    test_health_ready_and_schema_are_public,
    test_search_matches_sku_or_name_ignoring_case,
)
