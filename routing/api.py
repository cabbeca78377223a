from __future__ import annotations

import time
from typing import cast

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from providers.circuit import with_circuit_health
from routing.capabilities import request_capabilities
from routing.models import ApiKey
from routing.route_input import route_input_validate
from routing.selectors import model_specs
from routing.serializers import ErrorSerializer, RouteInputSerializer, RouteOutputSerializer
from routing.services.limits import rpm_admit
from routing.services.route import decision_payload, route_decide
from scope_site import metrics

_ERRORS = {
    code: OpenApiResponse(ErrorSerializer, description=text)
    for code, text in {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Unknown policy",
        413: "Body over 1 MB",
        422: "No eligible model",
        429: "Rate or budget limit",
    }.items()
}


class RouteApi(APIView):
    """Decide which model should answer; nothing is called. Every answer has its decision row."""

    @extend_schema(
        operation_id="route",
        request=RouteInputSerializer,
        responses={200: RouteOutputSerializer, **_ERRORS},
    )
    def post(self, request: Request) -> Response:
        api_key = cast(ApiKey | None, request.auth)  # set by BearerApiKeyAuthentication
        rpm_admit(api_key=api_key)
        data = route_input_validate(request.data)  # RouteInputSerializer's result, faster
        started = time.perf_counter()
        result = route_decide(
            messages=data["messages"],
            api_key=api_key,
            policy=data.get("policy"),
            alpha=data.get("alpha"),
            max_cost_usd=data.get("max_cost_usd"),
            max_latency_ms=data.get("max_latency_ms"),
            models=data.get("models", ()),
            user=data.get("user", ""),
            metadata=data.get("metadata"),
            required_capabilities=request_capabilities(messages=data["messages"], options={}),
            catalog=with_circuit_health(model_specs()),  # open circuits: excluded, with the reason
        )
        row = result.row
        metrics.decision_observed(
            kind="route",
            policy=row.policy_slug,
            model=row.chosen_model,
            strategy=row.strategy,
            seconds=time.perf_counter() - started,
        )
        return Response(decision_payload(row))
